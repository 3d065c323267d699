"""Named Gemma architectures: the one place that says what each model size is.

A `ModelConfig` holds architecture facts only: what a checkpoint needs to be read
correctly. Everything the forward pass branches on is a field here, so Gemma 1, 2
and 3 share one module tree (`toolkit.models.gemma`); Gemma 4, whose layers differ
in shape by type, has its own (`toolkit.models.gemma4`), built from the same fields
plus its own.

How a model runs (storage and compute dtypes, remat, layer scan, a quantized base,
MoE dispatch) is a `Runtime`, chosen per run and never read from a checkpoint: the
same architecture runs in fp32 on a laptop and bf16 on a pod. A model holds both
(`model.config`, `model.runtime`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from toolkit.models import quant

FAMILIES = ("gemma", "gemma2", "gemma3", "gemma4")
# How a mixture-of-experts layer runs its experts (`toolkit.models.moe.dispatch_impl`).
MOE_DISPATCH = ("auto", "dense", "sorted")
# Activation checkpointing of each decoder layer. "none": keep every activation; "dots"
# (the default): keep the projections' matmul outputs and recompute the cheap elementwise
# rest, which on a 2-core CPU made the 270M train step ~22% faster than "none" (fewer
# per-layer buffers to stack and copy) and uses less memory; "full": recompute each
# layer in the backward pass (least memory).
REMAT_POLICIES = ("none", "dots", "full")
STORAGE_DTYPES = ("float32", "bfloat16", "float16")
# Also accepted by `Runtime` (the Python API, not run configs): fp64 weights and compute for
# numerical checks on CPU, e.g. that a sharded step is the same computation as one device's
# where fp32 rounding alone differs by ~1e-5. Needs `jax_enable_x64`.
CHECK_DTYPES = ("float64",)


def _x64() -> bool:
    import jax  # only for a float64 runtime: reading a config must not pay the import

    return bool(jax.config.jax_enable_x64)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a model runs, as opposed to what it is (`ModelConfig`).

    `param_dtype` stores the frozen base and `dtype` is the activations' (LoRA weights,
    norms, softmaxes and losses stay fp32 whatever is chosen). `scan_layers`: layers under
    `lax.scan`, with weights stacked on a leading `layers` axis (one compiled body), or
    unrolled (one program region per layer: slower to compile, kept to check the scan
    against; Gemma 4, whose layers differ in shape by type, scans over its repeating block
    of layer types, `toolkit.models.layout.blocks`). `base_quant` stores the frozen projections and embedding as int8 / packed
    int4 with float scales, dequantized in each matmul (QLoRA; `toolkit.models.quant`).
    `moe_dispatch`: "auto" (grouped matmul on accelerators, dense einsum on CPU),
    "sorted" or "dense".
    """

    param_dtype: str = "bfloat16"
    dtype: str = "float32"
    remat: str = "dots"
    scan_layers: bool = True
    base_quant: str = "none"
    moe_dispatch: str = "auto"

    def __post_init__(self) -> None:
        for key in ("param_dtype", "dtype"):
            value = getattr(self, key)
            if value in CHECK_DTYPES and not _x64():
                raise ValueError(f"{key}: {value} needs jax.config.update('jax_enable_x64', True) first")
            if value not in (*STORAGE_DTYPES, *CHECK_DTYPES):
                raise ValueError(f"{key}: got {value!r}; must be one of {', '.join(STORAGE_DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat: got {self.remat!r}; must be one of {', '.join(REMAT_POLICIES)}")
        quant.check_mode(self.base_quant)
        if self.moe_dispatch not in MOE_DISPATCH:
            raise ValueError(f"moe_dispatch: got {self.moe_dispatch!r}; must be one of {', '.join(MOE_DISPATCH)}")

    def replace(self, **changes: Any) -> "Runtime":
        return dataclasses.replace(self, **changes)

    def check(self, config: "ModelConfig") -> None:
        """What this runtime cannot do for `config`: int4 packs two values per byte along each
        weight's last axis, so every width that ends a weight must be even."""
        if self.base_quant != "int4":
            return
        c = config
        widths = {"embed_dim": c.embed_dim, "mlp_dim": c.mlp_dim, "expert_mlp_dim": c.expert_mlp_dim,
                  "per_layer_input_dim": c.per_layer_input_dim,
                  **{f"head_dim of layer {i}": c.layer_head_dim(i) for i in range(c.num_layers)}}
        odd = next((k for k, v in widths.items() if v and v % 2), None)
        if odd:
            raise ValueError(f"model {c.name!r}: base_quant='int4' packs two values per byte, but {odd} is "
                             f"{widths[odd]} (odd); use base_quant=int8")

LOCAL, GLOBAL = "sliding_attention", "full_attention"  # Gemma 4's explicit layer types (HF / keras-hub names)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one Gemma model.

    `mlp_dim` is the real width of each GeGLU branch (keras-hub's Gemma 1/2
    `intermediate_dim` is twice that; the importers convert). A layer is
    global (full attention) when `sliding_window_pattern` is None or
    `(i + 1) % sliding_window_pattern == 0`; otherwise it is local and sees
    only the last `sliding_window` tokens. This one rule covers Gemma 2
    (pattern 2: local, global, ...) and Gemma 3 (pattern 6: five local, one
    global); Gemma 4 may instead list `layer_types` explicitly.

    Gemma 4 (family "gemma4"; see `toolkit.models.gemma4`) adds the fields
    below `max_seq_len`. Its attention is unscaled (Q/K norms instead:
    `query_pre_attn_scalar=1.0`) and always has QK-norm and post norms. Global
    layers may have their own head size (`global_head_dim`) and, with
    `num_global_kv_heads`, fewer K/V heads whose values reuse the key
    projection (K=V; keras-hub ties the two together), and rotate only
    `rope_partial_global` of each head (the rest is position-free). The last
    `num_kv_shared_layers` layers compute no K/V: each reuses that of the last
    earlier non-shared layer of its type, and with `use_double_wide_mlp` has a
    2 * mlp_dim MLP. `per_layer_input_dim` > 0 (the 2B/4B "per-layer
    embeddings") gives every layer a per-token input from a second embedding
    table of `per_layer_vocab_size` (None: vocab_size) rows.
    """

    name: str
    family: str
    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    head_dim: int
    mlp_dim: int
    query_pre_attn_scalar: float
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    use_post_attn_norm: bool = False
    use_post_ffw_norm: bool = False
    use_qk_norm: bool = False
    sliding_window: int | None = None
    sliding_window_pattern: int | None = None
    rope_base_global: float = 10_000.0
    rope_base_local: float = 10_000.0
    rope_scale_global: float = 1.0
    rope_scale_local: float = 1.0
    norm_eps: float = 1e-6
    max_seq_len: int = 8192
    # Gemma 4 only (defaults: off, so Gemma 1-3 configs are unchanged).
    layer_types: tuple[str, ...] | None = None
    global_head_dim: int | None = None
    num_global_kv_heads: int | None = None
    rope_partial_global: float = 1.0
    num_kv_shared_layers: int = 0
    use_double_wide_mlp: bool = False
    per_layer_input_dim: int = 0
    per_layer_vocab_size: int | None = None
    # Mixture of experts (26B-A4B; `toolkit.models.moe`): `num_experts` > 0 adds, beside every
    # layer's dense MLP, a router choosing `experts_per_token` GeGLU experts of width
    # `expert_mlp_dim` (how they run: `Runtime.moe_dispatch`).
    num_experts: int = 0
    experts_per_token: int = 8
    expert_mlp_dim: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model {self.name!r}: family {self.family!r} is not one of {FAMILIES}")
        if self.layer_types is not None:  # a list from JSON: configs must stay hashable
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.family == "gemma4":
            self._check_gemma4()
        else:
            for f in _GEMMA4_FIELDS:
                if getattr(self, f.name) != f.default:
                    raise ValueError(f"model {self.name!r}: {f.name} is a Gemma 4 field; family {self.family!r} "
                                     "cannot use it")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model {self.name!r}: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.sliding_window_pattern is not None and not self.sliding_window:
            raise ValueError(f"model {self.name!r}: sliding_window_pattern needs sliding_window > 0")

    def _check_gemma4(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"model {self.name!r}: {msg}")

        n = self.num_layers
        if self.layer_types is not None:
            if len(self.layer_types) != n:
                raise bad(f"layer_types has {len(self.layer_types)} entries, expected num_layers={n}")
            odd = sorted(set(self.layer_types) - {LOCAL, GLOBAL})
            if odd:
                raise bad(f"layer_types {odd} are not {LOCAL!r} or {GLOBAL!r}")
        for field, v in (("head_dim", self.head_dim), ("global_head_dim", self.global_head_dim)):
            if v is not None and (v <= 0 or v % 2):
                raise bad(f"{field}={v} must be a positive even number (RoPE rotates halves)")
        g = self.num_global_kv_heads
        if g is not None and (g <= 0 or self.num_heads % g):
            raise bad(f"num_heads={self.num_heads} is not a multiple of num_global_kv_heads={g}")
        if not 0.0 < self.rope_partial_global <= 1.0:
            raise bad(f"rope_partial_global={self.rope_partial_global} must be in (0, 1]")
        if self.per_layer_input_dim < 0:
            raise bad(f"per_layer_input_dim={self.per_layer_input_dim} must be >= 0 (0: no per-layer inputs)")
        if self.per_layer_vocab_size is not None and self.per_layer_vocab_size <= 0:
            raise bad(f"per_layer_vocab_size={self.per_layer_vocab_size} must be positive (or None: vocab_size)")
        if self.num_experts < 0:
            raise bad(f"num_experts={self.num_experts} must be >= 0 (0: a dense model)")
        if self.num_experts:
            if not 1 <= self.experts_per_token <= self.num_experts:
                raise bad(f"experts_per_token={self.experts_per_token} must be in [1, num_experts="
                          f"{self.num_experts}]")
            if self.expert_mlp_dim <= 0:
                raise bad(f"expert_mlp_dim={self.expert_mlp_dim} must be positive with num_experts > 0")
        if not 0 <= self.num_kv_shared_layers < n:
            raise bad(f"num_kv_shared_layers={self.num_kv_shared_layers} must be in [0, num_layers={n})")
        for i in range(n - self.num_kv_shared_layers, n):
            if self.kv_shared_source(i) is None:
                kind = "global" if self.is_global_layer(i) else "local"
                raise bad(f"K/V-shared layer {i} is {kind} but no earlier non-shared layer is "
                          f"(num_kv_shared_layers={self.num_kv_shared_layers} too large)")

    def is_global_layer(self, i: int) -> bool:
        if self.layer_types is not None:
            return self.layer_types[i] == GLOBAL
        if self.sliding_window_pattern is None:
            return True
        return (i + 1) % self.sliding_window_pattern == 0

    # Per-layer shapes (Gemma 4's differ by layer type; for Gemma 1-3 they are the plain fields).

    def layer_head_dim(self, i: int) -> int:
        return self.global_head_dim if self.global_head_dim and self.is_global_layer(i) else self.head_dim

    def layer_k_eq_v(self, i: int) -> bool:
        """Global layers with `num_global_kv_heads` take values from the key projection (K=V)."""
        return self.num_global_kv_heads is not None and self.is_global_layer(i)

    def layer_kv_heads(self, i: int) -> int:
        return self.num_global_kv_heads if self.layer_k_eq_v(i) else self.num_kv_heads  # type: ignore[return-value]

    def kv_shared_source(self, i: int) -> int | None:
        """For one of the last `num_kv_shared_layers` layers, the layer whose K/V it reuses: the
        last non-shared layer of the same type (keras-hub / HF rule); None for any other layer."""
        first = self.num_layers - self.num_kv_shared_layers
        if i < first:
            return None
        g = self.is_global_layer(i)
        return next((j for j in range(first - 1, -1, -1) if self.is_global_layer(j) == g), None)

    def layer_mlp_dim(self, i: int) -> int:
        wide = self.use_double_wide_mlp and self.kv_shared_source(i) is not None
        return 2 * self.mlp_dim if wide else self.mlp_dim

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Strict, except for the run-time fields that saved configs carried before `Runtime`
        was split off: they are dropped (a saved classifier's spec holds its runtime)."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in _LEGACY_RUNTIME}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known: {sorted(names)}")
        return cls(**d)


_LEGACY_RUNTIME = frozenset(f.name for f in dataclasses.fields(Runtime))
_GEMMA4_FIELDS = tuple(f for f in dataclasses.fields(ModelConfig)
                       if f.name in ("layer_types", "global_head_dim", "num_global_kv_heads", "rope_partial_global",
                                     "num_kv_shared_layers", "use_double_wide_mlp", "per_layer_input_dim",
                                     "per_layer_vocab_size"))


def _gemma1(name: str, **kw: Any) -> ModelConfig:
    kw = {"vocab_size": 256_000, "max_seq_len": 8192, **kw}
    return ModelConfig(name=name, family="gemma", **kw)


def _gemma2(name: str, **kw: Any) -> ModelConfig:
    kw = {"vocab_size": 256_000, "max_seq_len": 8192, **kw}
    return ModelConfig(
        name=name,
        family="gemma2",
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        sliding_window_pattern=2,
        **kw,
    )


def _gemma3(name: str, **kw: Any) -> ModelConfig:
    kw.setdefault("vocab_size", 262_144)
    return ModelConfig(
        name=name,
        family="gemma3",
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        use_qk_norm=True,
        sliding_window_pattern=6,
        rope_base_local=10_000.0,
        rope_base_global=1_000_000.0,
        **kw,
    )


def _gemma4(name: str, **kw: Any) -> ModelConfig:
    kw = {"vocab_size": 262_144, "max_seq_len": 131_072, "rope_base_local": 10_000.0,
          "rope_base_global": 1_000_000.0, "final_logit_softcap": 30.0, **kw}
    return ModelConfig(
        name=name,
        family="gemma4",
        query_pre_attn_scalar=1.0,  # no 1/sqrt(d) scaling: Q/K norms bound the logits
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        use_qk_norm=True,
        **kw,
    )


_NAMED: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        _gemma1("gemma_2b", num_layers=18, num_heads=8, num_kv_heads=1, embed_dim=2048,
                head_dim=256, mlp_dim=16_384, query_pre_attn_scalar=256),
        _gemma1("gemma_7b", num_layers=28, num_heads=16, num_kv_heads=16, embed_dim=3072,
                head_dim=256, mlp_dim=24_576, query_pre_attn_scalar=256),
        _gemma2("gemma2_2b", num_layers=26, num_heads=8, num_kv_heads=4, embed_dim=2304,
                head_dim=256, mlp_dim=9216, query_pre_attn_scalar=256, sliding_window=4096),
        _gemma2("gemma2_9b", num_layers=42, num_heads=16, num_kv_heads=8, embed_dim=3584,
                head_dim=256, mlp_dim=14_336, query_pre_attn_scalar=256, sliding_window=4096),
        _gemma3("gemma3_270m", num_layers=18, num_heads=4, num_kv_heads=1, embed_dim=640,
                head_dim=256, mlp_dim=2048, query_pre_attn_scalar=256, sliding_window=512,
                max_seq_len=32_768),
        _gemma3("gemma3_1b", num_layers=26, num_heads=4, num_kv_heads=1, embed_dim=1152,
                head_dim=256, mlp_dim=6912, query_pre_attn_scalar=256, sliding_window=512,
                max_seq_len=32_768),
        _gemma3("gemma3_4b", num_layers=34, num_heads=8, num_kv_heads=4,
                embed_dim=2560, head_dim=256, mlp_dim=10_240, query_pre_attn_scalar=256,
                sliding_window=1024, rope_scale_global=8.0, max_seq_len=131_072),
        # Gemma 4 dense (text decoder; vision/audio towers not modelled). keras-hub 0.32's
        # gemma4_presets.py lists only Kaggle handles; these numbers are the checkpoints'
        # config.json `text_config` (google/gemma-4-E2B, -E4B, -31B) as keras-hub's
        # utils/transformers/convert_gemma4.py maps them onto Gemma4Backbone: hidden_size,
        # num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
        # global_head_dim, intermediate_size, sliding_window, layer_types (full at
        # i % 5 == 4 for E2B, i % 6 == 5 otherwise), num_kv_shared_layers,
        # use_double_wide_mlp, hidden_size_per_layer_input, num_global_key_value_heads +
        # attention_k_eq_v, rope_parameters (sliding 10k; full 1M, partial_rotary_factor
        # 0.25), final_logit_softcapping 30, max_position_embeddings.
        _gemma4("gemma4_2b", num_layers=35, num_heads=8, num_kv_heads=1, embed_dim=1536, head_dim=256,
                global_head_dim=512, mlp_dim=6144, sliding_window=512, sliding_window_pattern=5,
                rope_partial_global=0.25, num_kv_shared_layers=20, use_double_wide_mlp=True,
                per_layer_input_dim=256),
        _gemma4("gemma4_4b", num_layers=42, num_heads=8, num_kv_heads=2, embed_dim=2560, head_dim=256,
                global_head_dim=512, mlp_dim=10_240, sliding_window=512, sliding_window_pattern=6,
                rope_partial_global=0.25, num_kv_shared_layers=18, per_layer_input_dim=256),
        _gemma4("gemma4_31b", num_layers=60, num_heads=32, num_kv_heads=16, num_global_kv_heads=4,
                embed_dim=5376, head_dim=256, global_head_dim=512, mlp_dim=21_504, sliding_window=1024,
                sliding_window_pattern=6, rope_partial_global=0.25, max_seq_len=262_144),
        # 26B-A4B (mixture of experts): 30 layers (keras-hub's gemma4_26b_a4b preset
        # description) and google/gemma-4-26B-A4B's config.json text_config: hidden_size 2816,
        # 16 heads, 8 K/V heads (2 on global layers, K=V), head_dim 256 / global 512,
        # intermediate_size 2112 beside 128 experts of moe_intermediate_size 704, top_k_experts
        # 8, sliding_window 1024, five local layers to one global. That is 25.2B parameters, 3.8B
        # active per token (`toolkit.flops`), the published "26B total, 4B active".
        _gemma4("gemma4_26b_a4b", num_layers=30, num_heads=16, num_kv_heads=8, num_global_kv_heads=2,
                embed_dim=2816, head_dim=256, global_head_dim=512, mlp_dim=2112, sliding_window=1024,
                sliding_window_pattern=6, rope_partial_global=0.25, max_seq_len=262_144, num_experts=128,
                experts_per_token=8, expert_mlp_dim=704),
        # Tiny random configs of each family, for tests: every code path of the
        # full size (MQA/GQA, soft-capping, local/global layers, QK-norm) at a
        # size that compiles in seconds on a CPU.
        _gemma1("tiny_gemma", vocab_size=512, num_layers=2, num_heads=4, num_kv_heads=1,
                embed_dim=32, head_dim=8, mlp_dim=64, query_pre_attn_scalar=8, max_seq_len=128),
        _gemma2("tiny_gemma2", vocab_size=512, num_layers=4, num_heads=4, num_kv_heads=2,
                embed_dim=32, head_dim=8, mlp_dim=64, query_pre_attn_scalar=8, sliding_window=4,
                max_seq_len=128),
        _gemma3("tiny_gemma3", vocab_size=512, num_layers=6, num_heads=4, num_kv_heads=2,
                embed_dim=32, head_dim=8, mlp_dim=64, query_pre_attn_scalar=8, sliding_window=4,
                max_seq_len=128),
        # Gemma 4, 2B-like: per-layer inputs, K/V sharing (layers 3, 4 reuse layer 1's K/V,
        # layer 5 layer 2's) with double-wide MLPs there, wider partial-RoPE global heads.
        _gemma4("tiny_gemma4", vocab_size=512, num_layers=6, num_heads=4, num_kv_heads=1, embed_dim=32,
                head_dim=8, global_head_dim=16, mlp_dim=64, sliding_window=4, sliding_window_pattern=3,
                rope_partial_global=0.25, num_kv_shared_layers=3, use_double_wide_mlp=True,
                per_layer_input_dim=4, max_seq_len=128),
        # Gemma 4, 31B-like: global layers with fewer K/V heads (K=V), wider partial-RoPE heads.
        _gemma4("tiny_gemma4_global", vocab_size=512, num_layers=6, num_heads=4, num_kv_heads=2,
                num_global_kv_heads=1, embed_dim=32, head_dim=8, global_head_dim=16, mlp_dim=64,
                sliding_window=4, sliding_window_pattern=3, rope_partial_global=0.25, max_seq_len=128),
        # Gemma 4, 26B-A4B-like: 8 experts, 2 per token, beside a dense MLP, with K=V global layers.
        _gemma4("tiny_gemma4_moe", vocab_size=512, num_layers=6, num_heads=4, num_kv_heads=2,
                num_global_kv_heads=1, embed_dim=32, head_dim=8, global_head_dim=16, mlp_dim=48,
                sliding_window=4, sliding_window_pattern=3, rope_partial_global=0.25, max_seq_len=128,
                num_experts=8, experts_per_token=2, expert_mlp_dim=16),
    ]
}


def named_configs() -> list[str]:
    return sorted(_NAMED)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The named architecture, with `overrides` of its fields (e.g. a smaller vocabulary)."""
    try:
        cfg = _NAMED[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; named models: {', '.join(named_configs())}") from None
    return cfg.replace(**overrides) if overrides else cfg
