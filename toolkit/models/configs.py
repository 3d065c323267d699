"""Named Gemma architectures: the one place that says what each model size is.

A `ModelConfig` holds architecture facts only (what a checkpoint needs to be
read correctly) plus the two dtypes a run chooses. Everything the forward pass
branches on is a field here, so Gemma 1, 2 and 3 share one module tree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from toolkit.models import quant

FAMILIES = ("gemma", "gemma2", "gemma3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one Gemma model.

    `mlp_dim` is the real width of each GeGLU branch (keras-hub's Gemma 1/2
    `intermediate_dim` is twice that; the importers convert). A layer is
    global (full attention) when `sliding_window_pattern` is None or
    `(i + 1) % sliding_window_pattern == 0`; otherwise it is local and sees
    only the last `sliding_window` tokens. This one rule covers Gemma 2
    (pattern 2: local, global, ...) and Gemma 3 (pattern 6: five local, one
    global).
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
    # Run-time choices, not architecture: the frozen base's storage dtype and
    # the activation dtype. LoRA weights are always fp32.
    param_dtype: str = "bfloat16"
    dtype: str = "float32"
    # Activation checkpointing of each decoder layer: "none", "dots" or "full".
    remat: str = "dots"
    # Layers under `lax.scan` (one compiled body, weights stacked on a leading
    # `layers` axis) or unrolled (one program region per layer: slower to compile,
    # kept to check the scan against).
    scan_layers: bool = True
    # The frozen base's projections and embedding stored as int8 / packed int4 with
    # float scales, dequantized in each matmul (QLoRA; toolkit/models/quant.py).
    base_quant: str = "none"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model {self.name!r}: family {self.family!r} is not one of {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model {self.name!r}: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        try:
            quant.check_mode(self.base_quant)
        except ValueError as e:
            raise ValueError(f"model {self.name!r}: {e}") from None
        if self.sliding_window_pattern is not None and not self.sliding_window:
            raise ValueError(f"model {self.name!r}: sliding_window_pattern needs sliding_window > 0")

    def is_global_layer(self, i: int) -> bool:
        if self.sliding_window_pattern is None:
            return True
        return (i + 1) % self.sliding_window_pattern == 0

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known: {sorted(names)}")
        return cls(**d)


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
    ]
}


def named_configs() -> list[str]:
    return sorted(_NAMED)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The named architecture, with run-time fields (dtypes) overridable."""
    try:
        cfg = _NAMED[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; named models: {', '.join(named_configs())}") from None
    return cfg.replace(**overrides) if overrides else cfg
