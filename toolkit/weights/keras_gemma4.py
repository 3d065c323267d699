"""A keras-hub `Gemma4Backbone` (its text decoder) as our `ModelConfig` and flat weights.

`config_from_backbone(backbone)` maps the backbone's config to a family "gemma4"
`ModelConfig`; `params_from_backbone(backbone)` reads its text weights into the
flat exchange layout of `toolkit.models.gemma4` (fp32 numpy, keras-hub's kernel
orientation and norm gains as they are). A vision or audio tower, if the
backbone has one, is ignored. Mixture-of-experts backbones (26B-A4B) map
onto `toolkit.models.moe`'s stacked experts; bidirectional (embedding) backbones and keras-hub's "assistant" mode (every
layer K/V-shared) are refused.

`load_preset(dir)` has keras-hub build a preset directory's backbone and reads it
(Gemma 1-3 presets are read from their h5 file directly, `toolkit.weights.keras_preset`);
`backbone_kwargs` and `set_backbone_weights` go the other way, for exports. A
backbone with keras LoRA enabled yields merged kernels (keras' `kernel`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

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


def backbone_kwargs(config: ModelConfig) -> dict[str, Any]:
    """keras-hub `Gemma4Backbone` arguments for `config` (text only): the inverse of
    `config_from_backbone`, used to export a preset and in the parity tests."""
    if config.family != "gemma4":
        raise ValueError(f"{config.name}: family {config.family!r} is not gemma4")
    return dict(
        vocabulary_size=config.vocab_size, image_size=16, num_layers=config.num_layers,
        num_query_heads=config.num_heads, num_key_value_heads=config.num_kv_heads, hidden_dim=config.embed_dim,
        intermediate_dim=config.mlp_dim, head_dim=config.head_dim, global_head_dim=config.global_head_dim,
        attention_logit_soft_cap=config.attn_logit_softcap, final_logit_soft_cap=config.final_logit_softcap,
        use_sliding_window_attention=config.sliding_window is not None,
        sliding_window_size=config.sliding_window or 512, sliding_window_pattern=config.sliding_window_pattern or 6,
        layer_types=list(config.layer_types) if config.layer_types else None,
        global_rope_wavelength=config.rope_base_global, local_rope_wavelength=config.rope_base_local,
        global_rope_scaling_factor=config.rope_scale_global, local_rope_scaling_factor=config.rope_scale_local,
        global_rope_partial_rotary_factor=config.rope_partial_global,
        num_kv_shared_layers=config.num_kv_shared_layers, num_global_key_value_heads=config.num_global_kv_heads,
        hidden_size_per_layer_input=config.per_layer_input_dim,
        vocab_size_per_layer_input=config.per_layer_vocab_size, use_double_wide_mlp=config.use_double_wide_mlp,
        layer_norm_epsilon=config.norm_eps, enable_moe_block=config.num_experts > 0,
        num_experts=config.num_experts or None, expert_intermediate_dim=config.expert_mlp_dim or None,
        num_experts_per_token=config.experts_per_token, vision_encoder=None, audio_encoder=None,
    )


def skeleton_widths(config: ModelConfig) -> dict[str, Any]:
    """Tiny values for Gemma 4's own widths, on top of the ones every family's skeleton
    shrinks (`toolkit.export.keras_files.lora_layer_indices`): the same layers in the same
    order (what keras-hub's LoRA file indexes by) without allocating a full-size model."""
    c: dict[str, Any] = {}
    if config.global_head_dim:
        c["global_head_dim"] = 2
    if config.per_layer_input_dim:
        c.update(hidden_size_per_layer_input=2, vocab_size_per_layer_input=8)
    if config.num_experts:
        c["expert_intermediate_dim"] = 2
    return c


def set_backbone_weights(backbone: Any, config: ModelConfig, params: Mapping[str, np.ndarray]) -> None:
    """Assign our flat weights to a built `Gemma4Backbone` (the inverse of `params_from_backbone`,
    through the same name table), in place; a missing or misshapen tensor raises naming it."""
    for key, (_, var) in _text_variables(backbone, config):
        if key not in params:
            raise ValueError(f"{config.name}: tensor {key} is missing; keras-hub's Gemma4Backbone needs it")
        value = np.asarray(params[key], np.float32)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{config.name}: tensor {key} has shape {tuple(value.shape)}, keras expects "
                             f"{tuple(var.shape)}")
        var.assign(value.astype(var.dtype))


def load_preset(preset_dir: str | os.PathLike, *, name: str | None = None) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A keras-hub Gemma 4 preset directory's text decoder: built by keras-hub itself
    (`Gemma4Backbone.from_preset`), then read into our config and flat weights. A vision or
    audio tower in the preset is left out, and said so on stderr in one line."""
    from toolkit.quiet import import_quietly

    keras_hub = import_quietly("keras_hub")
    backbone = keras_hub.models.Gemma4Backbone.from_preset(str(preset_dir), dtype="float32")
    towers = [t for t, enc in (("vision", backbone.vision_encoder), ("audio", backbone.audio_encoder))
              if enc is not None]
    if towers:
        print(f"{preset_dir}: loading the text decoder of this Gemma 4 preset; its {' and '.join(towers)} "
              f"{'encoders are' if len(towers) > 1 else 'encoder is'} not used", file=sys.stderr)
    config = config_from_backbone(backbone, name=name or Path(preset_dir).name)
    return config, params_from_backbone(backbone, config)


def params_from_backbone(backbone: Any, config: ModelConfig | None = None) -> dict[str, np.ndarray]:
    """The text decoder's weights as our flat exchange dict (fp32 numpy; see `toolkit.models.gemma4`).

    Every text weight of the backbone must be used: one left over means the backbone has a
    feature this reader does not know, and raises naming it.
    """
    config = config or config_from_backbone(backbone)
    params: dict[str, np.ndarray] = {}
    used: set[int] = set()  # by identity: keras paths repeat (the audio encoder's are unprefixed, e.g. conv/kernel)
    for key, (value, var) in _text_variables(backbone, config):
        params[key] = np.asarray(value, dtype=np.float32)
        used.add(id(var))
    towers = {id(v) for enc in (backbone.vision_encoder, backbone.audio_encoder) if enc is not None
              for v in enc.weights}
    leftover = [v.path for v in backbone.weights
                if id(v) not in used and id(v) not in towers and "lora_kernel" not in v.path
                and "seed_generator" not in v.path]
    if leftover:
        raise ValueError(f"{config.name}: keras-hub Gemma 4 weights {leftover[:5]} are not read "
                         "(a feature of this backbone that toolkit.models.gemma4 lacks)")
    return params
