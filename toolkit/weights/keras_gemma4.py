"""A keras-hub `Gemma4Backbone` (its text decoder) as our `ModelConfig` and flat weights.

`config_from_backbone(backbone)` maps the backbone's config to a family "gemma4"
`ModelConfig`; `params_from_backbone(backbone)` reads its text weights into the
flat exchange layout of `toolkit.models.gemma4` (fp32 numpy, keras-hub's kernel
orientation and norm gains as they are). A vision or audio tower, if the
backbone has one, is ignored. Mixture-of-experts backbones (26B-A4B) map
onto `toolkit.models.moe`'s stacked experts; bidirectional (embedding) backbones and keras-hub's "assistant" mode (every
layer K/V-shared) are refused.

This works on a built backbone (e.g. `keras_hub.models.Gemma4Backbone.from_preset`
or a test's random one); reading a preset directory's h5 file directly, as
`toolkit.weights.keras_preset` does for Gemma 1-3, is not wired up yet. A
backbone with keras LoRA enabled yields merged kernels (keras' `kernel`).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from toolkit.models.configs import GLOBAL, LOCAL, ModelConfig

BACKBONE = "Gemma4Backbone"


def config_from_backbone(backbone: Any, *, name: str = "keras_gemma4", max_seq_len: int = 131_072) -> ModelConfig:
    """The `ModelConfig` of a keras-hub `Gemma4Backbone` (text decoder; run-time dtypes left at
    their defaults). `max_seq_len` is not in keras-hub's config: 131072 for E2B/E4B, 262144 for 31B."""
    cls = type(backbone).__name__
    if cls != BACKBONE:
        raise ValueError(f"{name}: backbone is a {cls}, not a {BACKBONE}")
    c = backbone.get_config()
    if c.get("use_bidirectional_attention") or c.get("is_embedding_model"):
        raise ValueError(f"{name}: bidirectional / embedding Gemma 4 backbones are not supported (ours is causal)")
    n = int(c["num_layers"])
    pattern = int(c["sliding_window_pattern"])
    derived = [GLOBAL if i % pattern == pattern - 1 else LOCAL for i in range(n)]
    types = list(c.get("layer_types") or derived)
    sliding = bool(c["use_sliding_window_attention"])
    explicit = (not sliding) or types != derived  # without a window the pattern field cannot stand alone
    partial = c.get("global_rope_partial_rotary_factor")
    kw: dict[str, Any] = dict(
        name=name,
        family="gemma4",
        vocab_size=int(c["vocabulary_size"]),
        num_layers=n,
        num_heads=int(c["num_query_heads"]),
        num_kv_heads=int(c["num_key_value_heads"]),
        embed_dim=int(c["hidden_dim"]),
        head_dim=int(c["head_dim"]),
        mlp_dim=int(c["intermediate_dim"]),
        query_pre_attn_scalar=1.0,  # keras-hub's Gemma 4 attention is unscaled
        attn_logit_softcap=_opt_float(c.get("attention_logit_soft_cap")),
        final_logit_softcap=_opt_float(c.get("final_logit_soft_cap")),
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        use_qk_norm=True,
        sliding_window=int(c["sliding_window_size"]) if sliding else None,
        sliding_window_pattern=None if explicit else pattern,
        layer_types=tuple(types) if explicit else None,
        # keras-hub's defaults when the wavelengths are None (Gemma4Backbone.__init__).
        rope_base_global=float(c.get("global_rope_wavelength") or 1_000_000.0),
        rope_base_local=float(c.get("local_rope_wavelength") or 10_000.0),
        rope_scale_global=float(c.get("global_rope_scaling_factor") or 1.0),
        rope_scale_local=float(c.get("local_rope_scaling_factor") or 1.0),
        norm_eps=float(c.get("layer_norm_epsilon") or 1e-6),
        max_seq_len=max_seq_len,
        global_head_dim=_opt_int(c.get("global_head_dim")),
        num_global_kv_heads=_opt_int(c.get("num_global_key_value_heads")),
        rope_partial_global=1.0 if partial is None else float(partial),
        num_kv_shared_layers=int(c.get("num_kv_shared_layers") or 0),
        use_double_wide_mlp=bool(c.get("use_double_wide_mlp")),
        per_layer_input_dim=int(c.get("hidden_size_per_layer_input") or 0),
        per_layer_vocab_size=_opt_int(c.get("vocab_size_per_layer_input")),
    )
    if c.get("enable_moe_block"):
        kw.update(num_experts=int(c["num_experts"]), experts_per_token=int(c["num_experts_per_token"]),
                  expert_mlp_dim=int(c["expert_intermediate_dim"]))
    return ModelConfig(**kw)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _k(layer: Any) -> tuple[Any, Any]:
    """A Dense / EinsumDense kernel (merged with its adapter when keras LoRA is on) and its variable."""
    return layer.kernel, getattr(layer, "_kernel", layer.kernel)


def _v(var: Any) -> tuple[Any, Any]:
    return var, var


def _text_variables(backbone: Any, config: ModelConfig) -> Iterator[tuple[str, tuple[Any, Any]]]:
    """(our flat name, (value, keras variable)) for every tensor of the text decoder."""
    yield "embedder.input_embedding", _v(backbone.token_embedding.embeddings)
    if config.per_layer_input_dim:
        yield "per_layer_embedder.input_embedding", _v(backbone.per_layer_token_embedding.embeddings)
        yield "per_layer_projection.kernel", _k(backbone.per_layer_model_projection)
        yield "per_layer_projection_norm.scale", _v(backbone.per_layer_projection_norm.scale)
    for i, block in enumerate(backbone.transformer_layers):
        p, attn = f"layers.{i}", block.attention
        yield f"{p}.pre_attention_norm.scale", _v(block.pre_attention_norm.scale)
        yield f"{p}.attn.q_proj.kernel", _k(attn.query_dense)
        yield f"{p}.attn.q_norm.scale", _v(attn.query_norm.scale)
        if config.kv_shared_source(i) is None:
            yield f"{p}.attn.k_proj.kernel", _k(attn.key_dense)
            yield f"{p}.attn.k_norm.scale", _v(attn.key_norm.scale)
            if not config.layer_k_eq_v(i):
                yield f"{p}.attn.v_proj.kernel", _k(attn.value_dense)
        yield f"{p}.attn.o_proj.kernel", _k(attn.output_dense)
        yield f"{p}.post_attention_norm.scale", _v(block.post_attention_norm.scale)
        yield f"{p}.pre_ffw_norm.scale", _v(block.pre_ffw_norm.scale)
        yield f"{p}.mlp.gate_proj.kernel", _k(block.gating_ffw)
        yield f"{p}.mlp.up_proj.kernel", _k(block.gating_ffw_2)
        yield f"{p}.mlp.down_proj.kernel", _k(block.ffw_linear)
        yield f"{p}.post_ffw_norm.scale", _v(block.post_ffw_norm.scale)
        if config.num_experts:
            router, bank = block.moe_router, block.moe_expert_bank
            yield f"{p}.post_ffw_norm_dense.scale", _v(block.post_ffw_norm_dense.scale)
            yield f"{p}.pre_ffw_norm_moe.scale", _v(block.pre_ffw_norm_moe.scale)
            yield f"{p}.post_ffw_norm_moe.scale", _v(block.post_ffw_norm_moe_path.scale)
            yield f"{p}.experts.router_scale", _v(router.per_dim_scale)
            yield f"{p}.experts.router_proj", _k(router.proj)
            for w in ("gate_proj", "up_proj", "down_proj", "per_expert_scale"):
                yield f"{p}.experts.{w}", _v(getattr(bank, w))
        if config.per_layer_input_dim:
            yield f"{p}.per_layer_gate.kernel", _k(block.per_layer_input_gate)
            yield f"{p}.per_layer_up_proj.kernel", _k(block.per_layer_up_proj)
            yield f"{p}.post_per_layer_norm.scale", _v(block.post_per_layer_input_norm.scale)
        yield f"{p}.layer_scalar", _v(block.layer_scalar)
    yield "final_norm.scale", _v(backbone.layer_norm.scale)


def params_from_backbone(backbone: Any, config: ModelConfig | None = None) -> dict[str, np.ndarray]:
    """The text decoder's weights as our flat exchange dict (fp32 numpy; see `toolkit.models.gemma4`).

    Every text weight of the backbone must be used: one left over means the backbone has a
    feature this reader does not know, and raises naming it.
    """
    config = config or config_from_backbone(backbone)
    params: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for key, (value, var) in _text_variables(backbone, config):
        params[key] = np.asarray(value, dtype=np.float32)
        used.add(var.path)
    towers = {v.path for enc in (backbone.vision_encoder, backbone.audio_encoder) if enc is not None
              for v in enc.weights}
    leftover = [v.path for v in backbone.weights
                if v.path not in used and v.path not in towers and "lora_kernel" not in v.path
                and "seed_generator" not in v.path]
    if leftover:
        raise ValueError(f"{config.name}: keras-hub Gemma 4 weights {leftover[:5]} are not read "
                         "(a feature of this backbone that toolkit.models.gemma4 lacks)")
    return params
