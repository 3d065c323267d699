"""One entry point from "a model the user named" to (Gemma, Tokenizer).

A spec is, in the order tried: a `.gguf` file, a keras-hub preset directory,
a model name that ships as a GGUF on PyPI (`gemma3_270m`), or a Kaggle handle /
keras-hub preset name downloaded with kagglehub (needs network and Kaggle
credentials; kept real even where it cannot run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.models.gemma import Gemma, from_params
from toolkit.models.lora import LoRAConfig
from toolkit.models.tokenizer import Tokenizer
from toolkit.weights.errors import WeightImportError
from toolkit.weights.gguf import PYPI_GGUF_MODELS, load_gguf, resolve_gguf
from toolkit.weights.kaggle import download_preset
from toolkit.weights.keras_preset import load_keras_preset


def resolve(spec: str | Path, cache_dir: str | Path | None = None) -> tuple[str, Path]:
    """("gguf" | "keras_preset", local path) for a model spec, downloading if needed."""
    path = Path(spec).expanduser()
    if path.is_file():
        return "gguf", path
    if path.is_dir():
        return "keras_preset", path
    if str(spec) in PYPI_GGUF_MODELS:
        return "gguf", resolve_gguf(str(spec), cache_dir=cache_dir)
    if path.suffix == ".gguf":
        raise WeightImportError(f"{spec}: no such GGUF file")
    return "keras_preset", download_preset(str(spec), cache_dir=cache_dir)


def load_pretrained(
    spec: str | Path,
    *,
    lora: LoRAConfig | None = None,
    param_dtype: str | None = None,
    dtype: str | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    remat: str | None = None,
) -> tuple[Gemma, Tokenizer]:
    """Load weights and tokenizer for `spec`, with optional fresh LoRA adapters."""
    kind, path = resolve(spec, cache_dir)
    if kind == "gguf":
        config, params = load_gguf(path)
        tokenizer = Tokenizer.from_gguf(path)
    else:
        config, params, spm = load_keras_preset(path)
        if spm is None:
            raise WeightImportError(f"{path}: no assets/tokenizer/vocabulary.spm in this preset")
        tokenizer = Tokenizer.from_spm(spm)
    overrides: dict[str, Any] = {}
    if param_dtype:
        overrides["param_dtype"] = param_dtype
    if dtype:
        overrides["dtype"] = dtype
    if remat:
        overrides["remat"] = remat
    config = config.replace(**overrides)
    return from_params(config, params, lora=lora, seed=seed, source=str(path)), tokenizer
