"""Read a keras-hub Gemma preset directly into our flat weight layout.

No Keras model is built: `config.json` (keras-hub's serialized backbone) is
mapped to a `ModelConfig` and `model.weights.h5` is read with h5py.

The h5 layout is Keras 3's `saving_lib` layout, which addresses layers by
*structure*, not by layer name: the backbone's layers sit under `layers/`, each
named after its class in snake case with `_1`, `_2`, ... for repeats in graph
order, and each sublayer under the Python attribute that holds it; a layer's
variables are datasets `vars/0`, `vars/1`, ... in creation order. For a Gemma
backbone (verified on keras 3.15 / keras-hub 0.32):

    layers/reversible_embedding/vars/0                      token_embedding (vocab, embed)
    layers/gemma_decoder_block[_i]/...                      decoder_block_{i} (Gemma 1/2)
    layers/gemma3_decoder_block[_i]/...                     decoder_block_{i} (Gemma 3)
        pre_attention_norm/vars/0                           (embed,)
        attention/query_dense/vars/0                        "query" (heads, embed, head_dim)
        attention/key_dense/vars/0, value_dense/vars/0      (kv_heads, embed, head_dim)
        attention/output_dense/vars/0                       "attention_output" (heads, head_dim, embed)
        attention/query_norm/vars/0, key_norm/vars/0        (head_dim,)  Gemma 3
        post_attention_norm/vars/0                          Gemma 2/3
        pre_ffw_norm/vars/0
        gating_ffw/vars/0                                   "ffw_gating" (embed, mlp), through GeLU
        gating_ffw_2/vars/0                                 "ffw_gating_2" (embed, mlp)
        ffw_linear/vars/0                                   (mlp, embed)
        post_ffw_norm/vars/0                                Gemma 2/3
    layers/rms_normalization/vars/0                         final_normalization (embed,)

Recent Keras also stores each layer's name as attribute `name` on its `vars`
group; where present it is checked, so a file whose structure we misread fails
loudly instead of loading layers in the wrong order. bfloat16 tensors are
stored as opaque 2-byte values (attribute dtype="bfloat16") and are decoded
here. Large presets may be sharded: `model.weights.json` maps each
`/<path>/vars` to a shard file `model_0000k.weights.h5`.

LoRA: Keras never writes adapters into `model.weights.h5`. A backbone saved
with LoRA enabled has `kernel + (alpha / rank) * A @ B` merged into each
kernel (EinsumDense.save_own_variables); `save_lora_weights` writes adapters
to a separate `*.lora.h5` file keyed by layer index. So this reader returns
kernels only (merged where the preset was saved with LoRA on).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from toolkit.models.configs import ModelConfig
from toolkit.weights.errors import WeightImportError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_FILE = "model.weights.json"
TOKENIZER_FILE = "assets/tokenizer/vocabulary.spm"

GEMMA_BACKBONES = ("GemmaBackbone", "Gemma3Backbone", "Gemma4Backbone")  # 4: read through keras-hub

# keras-hub constructor defaults, for configs written by older versions that
# lack the newer keys.
_GEMMA_DEFAULTS: dict[str, Any] = {
    "query_head_dim_normalize": True,
    "use_post_ffw_norm": False,
    "use_post_attention_norm": False,
    "attention_logit_soft_cap": None,
    "final_logit_soft_cap": None,
    "use_sliding_window_attention": False,
    "sliding_window_size": 4096,
    "layer_norm_epsilon": 1e-6,
}
_GEMMA3_DEFAULTS: dict[str, Any] = {
    "query_head_dim_normalize": True,
    "use_query_key_norm": True,
    "use_post_ffw_norm": False,
    "use_post_attention_norm": False,
    "attention_logit_soft_cap": None,
    "final_logit_soft_cap": None,
    "use_sliding_window_attention": False,
    "sliding_window_size": 1024,
    "local_rope_scaling_factor": 1.0,
    "global_rope_scaling_factor": 1.0,
    "vision_encoder": None,
    "use_bidirectional_attention": False,
    "is_embedding_model": False,
    "layer_norm_epsilon": 1e-6,
}
_REQUIRED = (
    "vocabulary_size",
    "num_layers",
    "num_query_heads",
    "num_key_value_heads",
    "hidden_dim",
    "intermediate_dim",
    "head_dim",
)


def load_keras_preset(
    preset_dir: str | os.PathLike,
) -> tuple[ModelConfig, dict[str, np.ndarray], Path | None]:
    """Read a keras-hub Gemma preset directory.

    Returns `(config, params, tokenizer_path)`: the architecture as a
    `ModelConfig` (run-time dtypes left at their defaults), a flat dict of fp32
    numpy arrays in our layout (see `toolkit.models.gemma`), and the path of
    `assets/tokenizer/vocabulary.spm` or None when the preset has none.
    Raises `WeightImportError` naming the file and tensor/field on any problem.
    """
    root = Path(preset_dir)
    if not root.exists():
        raise WeightImportError(f"keras preset directory {root} does not exist")
    if not root.is_dir():
        raise WeightImportError(f"keras preset {root} is not a directory (expected a keras-hub preset directory)")
    backbone = read_backbone_config(root)
    if backbone["class_name"] == "Gemma4Backbone":
        from toolkit.weights.keras_gemma4 import load_preset

        try:
            config, params = load_preset(root, name=_preset_name(root))
        except ValueError as e:
            raise WeightImportError(f"{root}: {e}") from e
    else:
        config = keras_config_to_model_config(backbone, name=_preset_name(root), source=root / CONFIG_FILE)
        with _WeightsFile(root) as weights:
            params = _read_params(weights, config, backbone["class_name"])
    tokenizer = root / TOKENIZER_FILE
    return config, params, tokenizer if tokenizer.is_file() else None


def read_backbone_config(preset_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of a preset: {"class_name", "config", ...}, checked to be a Gemma backbone."""
    path = Path(preset_dir) / CONFIG_FILE
    if not path.is_file():
        raise WeightImportError(f"{path} is missing: a keras-hub preset directory needs {CONFIG_FILE}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightImportError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "class_name" not in data:
        raise WeightImportError(
            f"{path} is not a keras-hub backbone config: expected an object with 'class_name' and 'config'"
        )
    cls = data["class_name"]
    if cls not in GEMMA_BACKBONES:
        raise WeightImportError(
            f"{path}: backbone class_name {cls!r} is not a Gemma backbone (supported: {', '.join(GEMMA_BACKBONES)})"
        )
    return data


def keras_config_to_model_config(
    backbone: Mapping[str, Any], *, name: str = "keras_preset", source: str | os.PathLike = CONFIG_FILE
) -> ModelConfig:
    """Map keras-hub's serialized backbone ({"class_name", "config"}) to a `ModelConfig`.

    Gemma 1/2 (`GemmaBackbone`): keras-hub's `intermediate_dim` is twice the
    GeGLU branch width, so `mlp_dim = intermediate_dim // 2`; keras makes layer
    i local when `i % 2 == 0`, i.e. our pattern 2. Gemma 3: `intermediate_dim`
    is the branch width; layer i is local when `i % 6 < 5` (pattern 6), local
    layers use RoPE base 10k and global ones 1M, each with its scaling factor.
    """
    cls = backbone.get("class_name")
    raw = backbone.get("config")
    if cls not in GEMMA_BACKBONES or not isinstance(raw, Mapping):
        raise WeightImportError(f"{source}: backbone class_name {cls!r} is not a Gemma backbone")
    if cls == "Gemma4Backbone":  # keras-hub builds it: toolkit.weights.keras_gemma4.load_preset
        raise WeightImportError(f"{source}: a Gemma 4 config is read by toolkit.weights.keras_gemma4, not from JSON")
    missing = [k for k in _REQUIRED if raw.get(k) is None]
    if missing:
        raise WeightImportError(f"{source}: config field(s) {missing} missing from the {cls} config")
    c = dict(_GEMMA3_DEFAULTS if cls == "Gemma3Backbone" else _GEMMA_DEFAULTS)
    c.update(raw)
    for k in _REQUIRED:
        if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] <= 0:
            raise WeightImportError(f"{source}: config field {k!r} must be a positive integer, got {c[k]!r}")

    hidden, heads = c["hidden_dim"], c["num_query_heads"]
    # keras-hub computes the non-head_dim normaliser as hidden_dim // heads.
    scalar = float(c["head_dim"] if c["query_head_dim_normalize"] else hidden // heads)
    sliding = bool(c["use_sliding_window_attention"])
    kw: dict[str, Any] = dict(
        name=name,
        vocab_size=c["vocabulary_size"],
        num_layers=c["num_layers"],
        num_heads=heads,
        num_kv_heads=c["num_key_value_heads"],
        embed_dim=hidden,
        head_dim=c["head_dim"],
        query_pre_attn_scalar=scalar,
        attn_logit_softcap=_opt_float(c["attention_logit_soft_cap"]),
        final_logit_softcap=_opt_float(c["final_logit_soft_cap"]),
        use_post_attn_norm=bool(c["use_post_attention_norm"]),
        use_post_ffw_norm=bool(c["use_post_ffw_norm"]),
        sliding_window=int(c["sliding_window_size"]) if sliding else None,
        norm_eps=float(c["layer_norm_epsilon"]),
    )
    if cls == "Gemma3Backbone":
        if c.get("vision_encoder") is not None:
            raise WeightImportError(
                f"{source}: this Gemma3Backbone has a vision encoder; only text-only Gemma 3 presets are "
                "supported (use a text preset such as gemma3_1b or gemma3_4b_text)"
            )
        if c.get("is_embedding_model"):
            raise WeightImportError(
                f"{source}: this Gemma3Backbone is an embedding model (is_embedding_model=true, "
                "EmbeddingGemma); only causal Gemma 3 language models are supported"
            )
        if c.get("use_bidirectional_attention"):
            raise WeightImportError(
                f"{source}: use_bidirectional_attention=true is not supported (our Gemma is causal)"
            )
        global_scale = float(c["global_rope_scaling_factor"])
        kw.update(
            family="gemma3",
            mlp_dim=c["intermediate_dim"],
            use_qk_norm=bool(c["use_query_key_norm"]),
            sliding_window_pattern=6 if sliding else None,
            rope_base_local=10_000.0,
            rope_base_global=1_000_000.0,
            rope_scale_local=float(c["local_rope_scaling_factor"]),
            rope_scale_global=global_scale,
            max_seq_len=131_072 if global_scale > 1.0 else 32_768,
        )
    else:
        if c["intermediate_dim"] % 2:
            raise WeightImportError(
                f"{source}: GemmaBackbone intermediate_dim={c['intermediate_dim']} must be even "
                "(keras-hub splits it into two GeGLU branches of intermediate_dim // 2)"
            )
        gemma2 = any(
            (
                kw["attn_logit_softcap"] is not None,
                kw["final_logit_softcap"] is not None,
                kw["use_post_attn_norm"],
                kw["use_post_ffw_norm"],
                sliding,
            )
        )
        kw.update(
            family="gemma2" if gemma2 else "gemma",
            mlp_dim=c["intermediate_dim"] // 2,
            sliding_window_pattern=2 if sliding else None,
            max_seq_len=8192,
        )
    try:
        return ModelConfig(**kw)
    except ValueError as e:
        raise WeightImportError(f"{source}: {e}") from e


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _preset_name(root: Path) -> str:
    """The preset's name: its directory, or the parent for a kagglehub `<variation>/<version>` dir."""
    root = root.resolve()
    if root.name.isdigit() and root.parent.name:
        return root.parent.name
    return root.name


# ---------------------------------------------------------------------------
# Weights


def _expected(config: ModelConfig, family: str) -> Iterator[tuple[str, str, str, tuple[int, ...]]]:
    """(our key, h5 group path, keras layer name, expected shape) for every tensor, in file order."""
    E, H, K, D, M = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim, config.mlp_dim
    yield "embedder.input_embedding", "layers/reversible_embedding", "token_embedding", (config.vocab_size, E)
    block = "gemma3_decoder_block" if family == "Gemma3Backbone" else "gemma_decoder_block"
    for i in range(config.num_layers):
        g = block if i == 0 else f"{block}_{i}"
        p = f"layers.{i}"
        yield f"{p}.pre_attention_norm.scale", f"layers/{g}/pre_attention_norm", "pre_attention_norm", (E,)
        yield f"{p}.attn.q_proj.kernel", f"layers/{g}/attention/query_dense", "query", (H, E, D)
        yield f"{p}.attn.k_proj.kernel", f"layers/{g}/attention/key_dense", "key", (K, E, D)
        yield f"{p}.attn.v_proj.kernel", f"layers/{g}/attention/value_dense", "value", (K, E, D)
        yield f"{p}.attn.o_proj.kernel", f"layers/{g}/attention/output_dense", "attention_output", (H, D, E)
        if config.use_qk_norm:
            yield f"{p}.attn.q_norm.scale", f"layers/{g}/attention/query_norm", "query_norm", (D,)
            yield f"{p}.attn.k_norm.scale", f"layers/{g}/attention/key_norm", "key_norm", (D,)
        if config.use_post_attn_norm:
            yield f"{p}.post_attention_norm.scale", f"layers/{g}/post_attention_norm", "post_attention_norm", (E,)
        yield f"{p}.pre_ffw_norm.scale", f"layers/{g}/pre_ffw_norm", "pre_ffw_norm", (E,)
        yield f"{p}.mlp.gate_proj.kernel", f"layers/{g}/gating_ffw", "ffw_gating", (E, M)
        yield f"{p}.mlp.up_proj.kernel", f"layers/{g}/gating_ffw_2", "ffw_gating_2", (E, M)
        yield f"{p}.mlp.down_proj.kernel", f"layers/{g}/ffw_linear", "ffw_linear", (M, E)
        if config.use_post_ffw_norm:
            yield f"{p}.post_ffw_norm.scale", f"layers/{g}/post_ffw_norm", "post_ffw_norm", (E,)
    yield "final_norm.scale", "layers/rms_normalization", "final_normalization", (E,)


def _block_name(group: str) -> str | None:
    """`decoder_block_{i}` for a decoder-block group path, else None."""
    part = group.split("/")[1]
    if "decoder_block" not in part:
        return None
    tail = part.rsplit("_", 1)[-1]
    return f"decoder_block_{int(tail) if tail.isdigit() else 0}"


def _read_params(weights: "_WeightsFile", config: ModelConfig, family: str) -> dict[str, np.ndarray]:
    params: dict[str, np.ndarray] = {}
    used: set[str] = set()
    checked_blocks: set[str] = set()
    for key, group, layer_name, shape in _expected(config, family):
        # Where Keras recorded layer names, check we address the layer we think.
        block_group = "/".join(group.split("/")[:2])
        block = _block_name(group)
        if block is not None and block_group not in checked_blocks:
            checked_blocks.add(block_group)
            weights.check_name(block_group, block, key)
        weights.check_name(group, layer_name, key)
        dataset = f"{group}/vars/0"
        value = weights.read(dataset, key)
        used.add(dataset)
        if tuple(value.shape) != shape:
            raise WeightImportError(
                f"{weights.describe(dataset)}: tensor '{dataset}' ({key}) has shape {tuple(value.shape)}, "
                f"expected {shape} from {CONFIG_FILE} ({config.family}: vocab={config.vocab_size}, "
                f"embed={config.embed_dim}, heads={config.num_heads}, kv_heads={config.num_kv_heads}, "
                f"head_dim={config.head_dim}, mlp={config.mlp_dim})"
            )
        params[key] = value
    leftover = [d for d in weights.float_datasets() if d not in used]
    if leftover:
        more = f" and {len(leftover) - 5} more" if len(leftover) > 5 else ""
        raise WeightImportError(
            f"{weights.describe(leftover[0])}: tensors {leftover[:5]}{more} are not used by the architecture in "
            f"{CONFIG_FILE} ({config.family}, use_qk_norm={config.use_qk_norm}, post_attn_norm="
            f"{config.use_post_attn_norm}, post_ffw_norm={config.use_post_ffw_norm}); config and weights disagree"
        )
    return params


class _WeightsFile:
    """`model.weights.h5`, or the shards listed in `model.weights.json`, opened read-only."""

    def __init__(self, root: Path):
        import h5py

        self._h5py = h5py
        single = root / WEIGHTS_FILE
        index = root / SHARDED_WEIGHTS_FILE
        self.files: list[tuple[Path, Any]] = []
        if single.is_file():
            paths = [single]
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                names = sorted({n for v in weight_map.values() for n in ([v] if isinstance(v, str) else v)})
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
                raise WeightImportError(f"{index} is not a valid Keras sharded-weights index: {e!r}") from e
            paths = [root / n for n in names]
            for p in paths:
                if not p.is_file():
                    raise WeightImportError(f"{p} is missing (listed as a weights shard in {index})")
        else:
            raise WeightImportError(
                f"{single} is missing: a keras-hub preset directory needs {WEIGHTS_FILE} "
                f"(or a sharded {SHARDED_WEIGHTS_FILE})"
            )
        try:
            for p in paths:
                try:
                    self.files.append((p, h5py.File(p, "r")))
                except OSError as e:
                    raise WeightImportError(f"{p} is not a readable HDF5 file (truncated or corrupt?): {e}") from e
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "_WeightsFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for _, f in self.files:
            try:
                f.close()
            except Exception:
                pass
        self.files = []

    def _find(self, path: str) -> tuple[Path, Any] | None:
        for p, f in self.files:
            try:
                if path in f:
                    return p, f[path]
            except (OSError, KeyError, RuntimeError) as e:
                raise WeightImportError(f"{p}: cannot read '{path}' (truncated or corrupt?): {e}") from e
        return None

    def describe(self, path: str) -> Path:
        """The file holding `path` (the first file when it is nowhere)."""
        hit = self._find(path)
        return hit[0] if hit else self.files[0][0]

    def check_name(self, group: str, expected: str, key: str) -> None:
        hit = self._find(f"{group}/vars")
        if hit is None:
            return
        p, obj = hit
        name = obj.attrs.get("name")
        if isinstance(name, bytes):
            name = name.decode()
        if name is not None and name != expected:
            raise WeightImportError(
                f"{p}: group '{group}' holds keras layer {name!r}, expected {expected!r} (for {key}); "
                "the file's layout is not the keras-hub Gemma layout this reader understands"
            )

    def read(self, dataset: str, key: str) -> np.ndarray:
        hit = self._find(dataset)
        if hit is None:
            where = ", ".join(str(p) for p, _ in self.files)
            raise WeightImportError(f"{where}: tensor '{dataset}' ({key}) is missing")
        p, ds = hit
        if not isinstance(ds, self._h5py.Dataset):
            raise WeightImportError(f"{p}: '{dataset}' ({key}) is not a tensor")
        try:
            raw = ds[()]
        except (OSError, RuntimeError, ValueError) as e:
            raise WeightImportError(f"{p}: cannot read tensor '{dataset}' ({key}) (truncated or corrupt?): {e}") from e
        return _to_float32(np.asarray(raw), ds.attrs.get("dtype"), p, dataset, key)

    def float_datasets(self) -> list[str]:
        """Every floating-point (or bfloat16) tensor in the file(s), skipping dropout/RNG state."""
        out: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, self._h5py.Dataset) and ("dropout" not in name and "seed_generator" not in name):
                if obj.dtype.kind == "f" or (obj.dtype.kind == "V" and obj.dtype.itemsize == 2):
                    out.append(name)

        for p, f in self.files:
            try:
                f.visititems(visit)
            except (OSError, RuntimeError) as e:
                raise WeightImportError(f"{p}: cannot list tensors (truncated or corrupt?): {e}") from e
        return out


def _to_float32(raw: np.ndarray, dtype_attr: Any, path: Path, dataset: str, key: str) -> np.ndarray:
    if isinstance(dtype_attr, bytes):
        dtype_attr = dtype_attr.decode()
    if dtype_attr == "bfloat16" or (raw.dtype.kind == "V" and raw.dtype.itemsize == 2):
        # Keras writes bfloat16 as an opaque 2-byte type tagged dtype="bfloat16".
        import ml_dtypes

        return np.ascontiguousarray(raw).view(ml_dtypes.bfloat16).astype(np.float32)
    if raw.dtype.kind != "f":
        raise WeightImportError(
            f"{path}: tensor '{dataset}' ({key}) has dtype {raw.dtype}; only float presets are supported "
            "(quantized int8/int4 keras presets are not)"
        )
    return raw.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------
# The other direction: our config and weights into a keras-hub backbone.


def keras_backbone_config(config: ModelConfig) -> dict[str, Any]:
    """The keras-hub backbone (`{"class_name", "config"}`) equivalent of `config`.

    The inverse of `keras_config_to_model_config` for everything keras-hub can
    express; an architecture it cannot hold raises naming the field.
    """
    if config.family != "gemma3" and config.sliding_window_pattern not in (None, 2):
        raise WeightImportError(f"{config.name}: keras-hub's GemmaBackbone alternates local/global layers "
                                f"(pattern 2); sliding_window_pattern={config.sliding_window_pattern} cannot be held")
    if config.family == "gemma3" and config.sliding_window_pattern not in (None, 6):
        raise WeightImportError(f"{config.name}: keras-hub's Gemma3Backbone uses 5 local : 1 global layers; "
                                f"sliding_window_pattern={config.sliding_window_pattern} cannot be held")
    if config.query_pre_attn_scalar not in (config.head_dim, config.embed_dim // config.num_heads):
        raise WeightImportError(f"{config.name}: query_pre_attn_scalar={config.query_pre_attn_scalar} is neither "
                                "head_dim nor embed_dim // num_heads, the two scales keras-hub can express")
    c: dict[str, Any] = dict(
        vocabulary_size=config.vocab_size,
        num_layers=config.num_layers,
        num_query_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        hidden_dim=config.embed_dim,
        head_dim=config.head_dim,
        query_head_dim_normalize=config.query_pre_attn_scalar == config.head_dim,
        use_post_ffw_norm=config.use_post_ffw_norm,
        use_post_attention_norm=config.use_post_attn_norm,
        attention_logit_soft_cap=config.attn_logit_softcap,
        final_logit_soft_cap=config.final_logit_softcap,
        use_sliding_window_attention=config.sliding_window_pattern is not None,
        sliding_window_size=config.sliding_window or 4096,
        layer_norm_epsilon=config.norm_eps,
        dropout=0,
    )
    if config.family == "gemma3":
        if (config.rope_base_local, config.rope_base_global) != (10_000.0, 1_000_000.0):
            raise WeightImportError(f"{config.name}: keras-hub's Gemma3Backbone fixes RoPE bases at 10k local / 1M "
                                    f"global; got {config.rope_base_local} / {config.rope_base_global}")
        c.update(intermediate_dim=config.mlp_dim, use_query_key_norm=config.use_qk_norm,
                 local_rope_scaling_factor=config.rope_scale_local,
                 global_rope_scaling_factor=config.rope_scale_global,
                 image_size=896, vision_encoder=None)
        return {"class_name": "Gemma3Backbone", "config": c}
    if config.use_qk_norm or config.rope_base_global != 10_000.0 or config.rope_scale_global != 1.0:
        raise WeightImportError(f"{config.name}: keras-hub's GemmaBackbone has no QK-norm and fixed RoPE "
                                "(base 10k, no scaling); this config cannot be held")
    c.update(intermediate_dim=2 * config.mlp_dim)
    return {"class_name": "GemmaBackbone", "config": c}


def set_backbone_weights(backbone: Any, config: ModelConfig, params: Mapping[str, np.ndarray]) -> None:
    """Assign our flat weights to a built keras-hub Gemma backbone, in place.

    The h5 group paths in `_expected` name each keras variable's owner by
    attribute (`layers/<block>/attention/query_dense`), so the same table that
    reads presets also writes them; nothing is listed twice.
    """
    family = type(backbone).__name__
    blocks = backbone.transformer_layers
    for key, group, _, shape in _expected(config, family):
        parts = group.split("/")[1:]
        if parts[0] == "reversible_embedding":
            layer = backbone.token_embedding
        elif parts[0] == "rms_normalization":
            layer = backbone.layer_norm
        else:
            layer = blocks[int(key.split(".")[1])]
            for attr in parts[1:]:
                layer = getattr(layer, attr)
        value = np.asarray(params[key], np.float32)
        if tuple(value.shape) != shape:
            raise WeightImportError(f"tensor {key} has shape {tuple(value.shape)}, keras expects {shape}")
        layer.weights[0].assign(value.astype(layer.weights[0].dtype))
