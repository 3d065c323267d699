"""Hugging Face transformers Gemma checkpoints, in and out.

A transformers checkpoint directory holds `config.json` (`model_type` gemma,
gemma2, gemma3_text, or gemma3 with a `text_config`; Gemma 4's gemma4_text and
gemma4 are read by `toolkit.weights.hf_gemma4`, which this module dispatches to),
the weights as `model.safetensors` or shards listed in
`model.safetensors.index.json`, and the SentencePiece `tokenizer.model`. Projections are stored (out, in) like
torch's `nn.Linear`, query/key rows grouped by head with no rotary permutation
(Gemma's RoPE is rotate-half in both libraries), and RMSNorm weights in the
same `x * (1 + w)` convention as ours, so norms copy across unchanged. Of a
multimodal checkpoint only the text decoder is read; its towers are named on
stderr as left out.

Two config dialects exist: the one on the hub (`rope_theta`, `rope_scaling`,
`rope_local_base_freq`, `sliding_window_pattern`) and transformers 5's
(`rope_parameters` per attention type, `layer_types`). Both are read; export
writes the hub's, which every transformers version since Gemma 3 reads.

`hf:ORG/NAME[@REVISION]` downloads through `huggingface_hub` (its own cache,
or `$HF_HUB_CACHE`); offline, a cached snapshot is used, and without one the
error names the repo and the cache.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from toolkit.models.configs import ModelConfig
from toolkit.weights import hf_gemma4
from toolkit.weights.errors import WeightImportError
from toolkit.weights.hf_tensors import TensorMap, decoder_tensors, layer_tensors, named_or_new
from toolkit.weights.safetensors_file import SafetensorsFile
from toolkit.weights.safetensors_file import write as write_safetensors

HF_PREFIX = "hf:"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.model"
# What a download needs: no torch .bin duplicates, no GGUF or ONNX side files.
_DOWNLOAD_PATTERNS = ["config.json", "*.safetensors", INDEX_FILE, TOKENIZER_FILE, "tokenizer_config.json",
                      "special_tokens_map.json", "generation_config.json"]

_FAMILY = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3", "gemma3": "gemma3"}
GEMMA4_MODEL_TYPES = ("gemma4_text", "gemma4")  # read by toolkit.weights.hf_gemma4
_ARCHITECTURE = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
_MODEL_TYPE = {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}
# Where the decoder's tensors sit: a causal LM's "model.", or inside a multimodal
# Gemma 3 / 4 (transformers 5 and 4 spell it differently).
_PREFIXES = ("model.", "model.language_model.", "language_model.model.")


def is_hf_dir(path: Path) -> bool:
    """A transformers checkpoint directory (its config has a `model_type`; a keras-hub
    preset's has `class_name` instead)."""
    config = path / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False


# -- config -------------------------------------------------------------


def _rope(cfg: dict[str, Any], kind: str, source: Path) -> tuple[float | None, float]:
    """(theta, linear scale) of `kind` ("full_attention" / "sliding_attention") in either dialect."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict):  # transformers 5: one entry per attention type, or one for all
        entry = params[kind] if isinstance(params.get(kind), dict) else params
        theta, scaling = entry.get("rope_theta"), entry
    else:
        theta = cfg.get("rope_local_base_freq") if kind == "sliding_attention" else cfg.get("rope_theta")
        scaling = (cfg.get("rope_scaling") or {}) if kind == "full_attention" else {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type == "default":
        return theta, 1.0
    if rope_type == "linear":
        return theta, float(scaling["factor"])
    raise WeightImportError(f"{source}: rope type {rope_type!r} is not supported (default or linear only)")


def _pattern(cfg: dict[str, Any], family: str, num_layers: int, source: Path) -> int | None:
    """Our `sliding_window_pattern` (layer i is global when (i + 1) % p == 0) from `layer_types`."""
    types = cfg.get("layer_types")
    if not types:
        return cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or {"gemma2": 2,
                                                                                            "gemma3": 6}[family]
    if len(types) != num_layers or set(types) - {"sliding_attention", "full_attention"}:
        raise WeightImportError(f"{source}: layer_types must list sliding_attention / full_attention for each of "
                                f"the {num_layers} layers")
    if "full_attention" not in types:
        raise WeightImportError(f"{source}: layer_types has no full_attention layer, which this toolkit cannot run")
    p = types.index("full_attention") + 1
    if any((t == "full_attention") != ((i + 1) % p == 0) for i, t in enumerate(types)):
        raise WeightImportError(f"{source}: layer_types is not a repeating (local x {p - 1}, global) pattern, "
                                "which is the only one this toolkit runs")
    return p if "sliding_attention" in types else None


def config_from_hf(raw: Mapping[str, Any], source: Path, label: str) -> ModelConfig:
    """Our architecture from a transformers `config.json`; a named config when the sizes match one."""
    cfg = dict(raw)
    model_type = cfg.get("model_type")
    if model_type in GEMMA4_MODEL_TYPES:
        return hf_gemma4.config_from_hf(cfg, source, label)
    if model_type == "gemma3":  # the multimodal checkpoint: its decoder is the text config
        cfg = {"model_type": "gemma3_text", **(cfg.get("text_config") or {})}
        model_type = "gemma3_text"
    if model_type not in _FAMILY:
        raise WeightImportError(f"{source}: model_type {model_type!r} is not a Gemma; "
                                f"supported: {', '.join(sorted([*_FAMILY, *GEMMA4_MODEL_TYPES]))}")
    family = _FAMILY[model_type]
    if cfg.get("use_bidirectional_attention"):
        raise WeightImportError(f"{source}: use_bidirectional_attention=true is an embedding model, not a causal LM")

    def need(key: str) -> Any:
        if cfg.get(key) is None:
            raise WeightImportError(f"{source}: key {key!r} is missing")
        return cfg[key]

    embed, heads, layers = int(need("hidden_size")), int(need("num_attention_heads")), int(need("num_hidden_layers"))
    head_dim = int(cfg.get("head_dim") or embed // heads)
    theta_global, scale_global = _rope(cfg, "full_attention", source)
    theta_local, _ = _rope(cfg, "sliding_attention", source)
    sliding = int(cfg.get("sliding_window") or 0) if family != "gemma" else 0
    fields: dict[str, Any] = dict(
        family=family,
        vocab_size=int(need("vocab_size")),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        embed_dim=embed,
        head_dim=head_dim,
        mlp_dim=int(need("intermediate_size")),
        query_pre_attn_scalar=float(head_dim if family == "gemma" else cfg.get("query_pre_attn_scalar") or head_dim),
        attn_logit_softcap=float(cfg["attn_logit_softcapping"]) if cfg.get("attn_logit_softcapping") else None,
        final_logit_softcap=float(cfg["final_logit_softcapping"]) if cfg.get("final_logit_softcapping") else None,
        use_post_attn_norm=family != "gemma",
        use_post_ffw_norm=family != "gemma",
        use_qk_norm=family == "gemma3",
        sliding_window=sliding or None,
        sliding_window_pattern=_pattern(cfg, family, layers, source) if sliding else None,
        rope_base_global=float(theta_global or (1_000_000.0 if family == "gemma3" else 10_000.0)),
        rope_base_local=float(theta_local or 10_000.0) if family == "gemma3" else float(theta_global or 10_000.0),
        rope_scale_global=scale_global,
        norm_eps=float(cfg.get("rms_norm_eps") or 1e-6),
        max_seq_len=int(cfg.get("max_position_embeddings") or 8192),
    )
    return named_or_new(fields, label, source)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The hub-dialect `config.json` of our architecture (what `from_pretrained` reads)."""
    if config.family == "gemma4":
        return hf_gemma4.config_to_hf(config)
    c = config
    layer_types = ["full_attention" if c.is_global_layer(i) else "sliding_attention" for i in range(c.num_layers)]
    out: dict[str, Any] = {
        "architectures": [_ARCHITECTURE[c.family]], "model_type": _MODEL_TYPE[c.family],
        "vocab_size": c.vocab_size, "hidden_size": c.embed_dim, "intermediate_size": c.mlp_dim,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh",
        "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_base_global,
        "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": True,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "torch_dtype": "float32",
    }
    if c.family == "gemma":
        if c.query_pre_attn_scalar != c.head_dim:
            raise WeightImportError(f"model {c.name}: transformers' Gemma 1 scales attention by head_dim; "
                                    f"query_pre_attn_scalar={c.query_pre_attn_scalar} cannot be written")
        return out
    out.update({
        "query_pre_attn_scalar": int(c.query_pre_attn_scalar) if float(c.query_pre_attn_scalar).is_integer()
        else c.query_pre_attn_scalar,  # transformers 5 checks it is an int
        "attn_logit_softcapping": c.attn_logit_softcap,
        "final_logit_softcapping": c.final_logit_softcap, "sliding_window": c.sliding_window or c.max_seq_len,
        "layer_types": layer_types,
    })
    if c.family == "gemma3":
        out.update({"rope_local_base_freq": c.rope_base_local, "sliding_window_pattern": c.sliding_window_pattern,
                    "rope_scaling": ({"rope_type": "linear", "factor": c.rope_scale_global}
                                     if c.rope_scale_global != 1.0 else None)})
    return out


# -- tensors --------------------------------------------------------------


def _tensor_map(cfg: ModelConfig) -> TensorMap:
    """Every tensor of `cfg`'s decoder. Two of our keys may name the same HF tensor (Gemma 4's
    fused expert `gate_up_proj`): each reads its part, and `write_hf` joins them."""
    if cfg.family == "gemma4":
        return hf_gemma4.tensor_map(cfg)
    layer = layer_tensors(cfg.family, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim,
                          cfg.use_qk_norm)
    return decoder_tensors(cfg, lambda i: layer)


def _weight_files(root: Path) -> list[Path]:
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise WeightImportError(f"{index}: not a safetensors index ({e!r})") from None
        files = [root / name for name in dict.fromkeys(weight_map.values())]
    elif (root / WEIGHTS_FILE).is_file():
        files = [root / WEIGHTS_FILE]
    else:
        bins = sorted(p.name for p in root.glob("*.bin"))
        hint = f" (it has {bins[0]}: re-save with save_pretrained(..., safe_serialization=True))" if bins else ""
        raise WeightImportError(f"{root}: no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")
    for p in files:
        if not p.is_file():
            raise WeightImportError(f"{p}: listed in {INDEX_FILE} but missing")
    return files


def load_hf(directory: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, np.ndarray], Path | None]:
    """(config, flat fp32 params in our layout, tokenizer.model or None) from a transformers directory.

    Every tensor's presence and shape is checked before any is decoded, so a
    wrong checkpoint fails in well under a second, naming the file and tensor."""
    root = Path(directory)
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise WeightImportError(f"{root}: {CONFIG_FILE} is missing: not a transformers checkpoint directory")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightImportError(f"{config_path} is not valid JSON: {e}") from None
    config = config_from_hf(raw, config_path, raw.get("_name_or_path") or root.name)
    towers = [t for t in ("vision", "audio") if raw.get(f"{t}_config")]
    if towers:  # a multimodal checkpoint: the classifier reads text only
        print(f"{root}: loading the text decoder of this multimodal checkpoint; its {' and '.join(towers)} "
              f"tower{'s are' if len(towers) > 1 else ' is'} not used", file=sys.stderr)
    expected = _tensor_map(config)
    files = [SafetensorsFile(p) for p in _weight_files(root)]
    try:
        where = {name: f for f in files for name in f.keys()}
        prefix = next((p for p in _PREFIXES if p + "embed_tokens.weight" in where), None)
        if prefix is None:
            raise WeightImportError(f"{root}: no embed_tokens.weight under {', '.join(_PREFIXES)}: "
                                    "not a Gemma causal-LM checkpoint")
        for hf_key, shape, _, _ in expected.values():
            f = where.get(prefix + hf_key)
            if f is None:
                raise WeightImportError(f"{root}: tensor {prefix + hf_key!r} is missing (model {config.name})")
            if f.shape(prefix + hf_key) != shape:
                raise WeightImportError(f"{f.path}: tensor {prefix + hf_key!r} has shape "
                                        f"{f.shape(prefix + hf_key)}, expected {shape} for model {config.name}")
        params = {}
        for key, (hf_key, _, to_ours, _) in expected.items():
            # A copy, never a view of the mapped file (which closes below).
            value = np.array(to_ours(where[prefix + hf_key].tensor(prefix + hf_key)), dtype=np.float32, order="C")
            if not np.isfinite(value).all():
                raise WeightImportError(f"{where[prefix + hf_key].path}: tensor {prefix + hf_key!r} "
                                        "has non-finite values")
            params[key] = value
        del where
    finally:
        for f in files:
            f.close()
    tokenizer = root / TOKENIZER_FILE
    return config, params, tokenizer if tokenizer.is_file() else None


def write_hf(directory: Path, config: ModelConfig, params: Mapping[str, np.ndarray], spm: bytes,
             *, dtype: str = "float32") -> None:
    """A directory `transformers.AutoModelForCausalLM.from_pretrained` loads: config.json,
    model.safetensors (tied head: no lm_head tensor), tokenizer.model and its config."""
    import ml_dtypes

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    hf_config = dict(config_to_hf(config), torch_dtype=dtype)
    parts: dict[str, list[np.ndarray]] = {}
    for key, (hf_key, _, _, from_ours) in _tensor_map(config).items():
        parts.setdefault(hf_key, []).append(from_ours(np.asarray(params[key], np.float32)))
    # An HF tensor holding several of ours (Gemma 4's experts' gate_up_proj, (experts, 2 * mlp,
    # embed)) is their parts in table order along axis 1.
    tensors = {"model." + hf_key: np.ascontiguousarray(p[0] if len(p) == 1 else np.concatenate(p, axis=1))
               .astype(np_dtype) for hf_key, p in parts.items()}
    write_safetensors(directory / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}, indent=2) + "\n")
    (directory / TOKENIZER_FILE).write_bytes(spm)
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}, indent=2) + "\n")


# -- the hub --------------------------------------------------------------


def download(spec: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local snapshot of `hf:ORG/NAME[@REVISION]`: downloaded (only the files a Gemma
    needs) when the hub answers, else the cached copy, else an error naming both."""
    repo = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise WeightImportError(f"{spec}: expected hf:ORG/NAME (e.g. hf:google/gemma-3-270m), optionally @REVISION")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise WeightImportError(f"{spec}: Hugging Face downloads need huggingface_hub: "
                                "pip install huggingface_hub") from None
    cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    kwargs = dict(repo_id=repo, revision=revision or None, cache_dir=cache, allow_patterns=_DOWNLOAD_PATTERNS)
    online_error: Exception | None = None
    if not constants.HF_HUB_OFFLINE:
        try:
            return Path(snapshot_download(**kwargs))
        except Exception as e:  # noqa: BLE001 - any hub failure falls back to the cache below
            online_error = e
    try:
        return Path(snapshot_download(local_files_only=True, **kwargs))
    except Exception:  # noqa: BLE001
        why = (f"the hub did not answer ({type(online_error).__name__}: {str(online_error).splitlines()[0][:200]})"
               if online_error is not None else "HF_HUB_OFFLINE is set")
        raise WeightImportError(
            f"{spec}: not in the Hugging Face cache {cache} and {why}; download it where the hub is reachable "
            f"(huggingface-cli download {repo}), or give the checkpoint's local directory") from None
