"""Hugging Face transformers Gemma 4 checkpoints: config and tensor names (`toolkit.weights.hf`
dispatches here for `model_type` gemma4_text, a `Gemma4ForCausalLM`, and gemma4, a
`Gemma4ForConditionalGeneration` whose `text_config` and `model.language_model.` tensors are
the decoder; its vision and audio towers are not read).

The reference is transformers 5.25's `modeling_gemma4.py`, which our
`toolkit.models.gemma4` matches to 1e-4 in fp32 (tests/test_hf_gemma4.py):

* Norm gains are stored as is (`x / rms(x) * w`, no `1 + w`), as ours; attention is
  unscaled and has no logit soft-cap (an `attn_logit_softcapping` key is ignored, as
  transformers ignores it); the V norm has no gain, so no tensor.
* Global ("full_attention") layers' head size and K/V heads come in two dialects: the
  hub's `global_head_dim` / `num_global_key_value_heads` (the latter only with
  `attention_k_eq_v`), and transformers 5.25's `save_pretrained`, which writes them as
  `per_layer_config` overrides ({layer index: {head_dim, num_key_value_heads}}). Both
  are read; export writes the hub's, which transformers turns back into overrides.
* With `attention_k_eq_v` global layers have no `v_proj` (values are the keys'
  projection), our K=V (`num_global_kv_heads`); K/V-shared layers have no K/V tensors.
* RoPE per layer type: "default", "linear" (`factor`) or "proportional" (Gemma 4's
  partial rotation: `partial_rotary_factor` of the head turns, with the whole head's
  frequencies, exactly our `rope_partial_global`), only on global layers.
* The 26B-A4B's experts are one fused `gate_up_proj` (experts, 2 * mlp, embed) and a
  `down_proj` (experts, embed, mlp); the router holds `scale` (ours `router_scale`),
  `proj` and `per_expert_scale`; the extra norms are `post_feedforward_layernorm_1`
  (dense path), `pre_feedforward_layernorm_2` and `post_feedforward_layernorm_2`
  (expert path).
* Each layer's `layer_scalar` is a (1,) buffer, ours a scalar.

A config value our model cannot run raises `WeightImportError` in one line naming
the key, its value and what to use instead. Keys a `config.json` leaves out take
transformers' `Gemma4TextConfig` defaults (`_HF_DEFAULTS`), since that is the model
transformers would build from the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from toolkit.models.configs import GLOBAL, LOCAL, ModelConfig
from toolkit.models.gemma import rope_inv_freq
from toolkit.weights.errors import WeightImportError
from toolkit.weights.hf_tensors import TensorMap, decoder_tensors, layer_tensors, named_or_new, same, transpose

# transformers 5.25's Gemma4TextConfig defaults, for keys a config.json omits.
_HF_DEFAULTS: dict[str, Any] = {
    "head_dim": 256, "global_head_dim": 512, "num_key_value_heads": 4, "sliding_window": 512,
    "hidden_size_per_layer_input": 256, "vocab_size_per_layer_input": 262_144, "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
    "rope_parameters": {LOCAL: {"rope_type": "default", "rope_theta": 10_000.0},
                        GLOBAL: {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                 "rope_theta": 1_000_000.0}},
}
_ACTIVATION = "gelu_pytorch_tanh"  # our MLPs' tanh-approximate GeLU
_TIED = "this toolkit projects logits with the embedding (no separate lm_head), as every Gemma 4 does"


def _unsupported(source: Path, key: str, value: Any, fix: str) -> WeightImportError:
    return WeightImportError(f"{source}: {key}={value!r} is not supported by this toolkit's Gemma 4; {fix}")


def _text_config(raw: Mapping[str, Any], source: Path) -> dict[str, Any]:
    """The decoder's config: the file itself (gemma4_text) or its `text_config` (gemma4)."""
    if raw.get("model_type") == "gemma4_text":
        return dict(raw)
    text = raw.get("text_config")
    if not isinstance(text, dict):
        raise WeightImportError(f"{source}: model_type 'gemma4' without a text_config: not a Gemma 4 checkpoint")
    if raw.get("tie_word_embeddings") is False:
        raise _unsupported(source, "tie_word_embeddings", False, _TIED)
    return dict(text)


def _layer_types(cfg: Mapping[str, Any], n: int, source: Path) -> list[str]:
    """Each layer's type, as transformers reads them: five local to one global when not given,
    and the last layer always global (transformers forces it, with a warning)."""
    types = cfg.get("layer_types")
    if not types:
        return [GLOBAL if (i + 1) % 6 == 0 else LOCAL for i in range(n)]
    if len(types) != n or set(types) - {LOCAL, GLOBAL}:
        raise WeightImportError(f"{source}: layer_types must list {LOCAL} / {GLOBAL} for each of the "
                                f"{n} layers (num_hidden_layers); got {types!r}")
    return [*types[:-1], GLOBAL]


def _rope(cfg: Mapping[str, Any], kind: str, head_dim: int, source: Path) -> tuple[float, float, float]:
    """(theta, linear scale, partial rotary fraction) of layer type `kind`."""
    params = cfg.get("rope_parameters") or _HF_DEFAULTS["rope_parameters"]
    entry = params.get(kind) if isinstance(params.get(kind), dict) else params
    key = f"rope_parameters.{kind}"
    rope_type = entry.get("rope_type", entry.get("type", "default"))
    if entry.get("rope_theta") is None:
        raise WeightImportError(f"{source}: {key}.rope_theta is missing")
    theta, factor = float(entry["rope_theta"]), float(entry.get("factor") or 1.0)
    if rope_type == "default":  # transformers' Gemma 4 default RoPE ignores factor and partial_rotary_factor
        return theta, 1.0, 1.0
    partial = float(1.0 if entry.get("partial_rotary_factor") is None else entry["partial_rotary_factor"])
    if rope_type == "linear" and partial < 1.0:  # transformers rotates a shorter slice here, not Gemma 4's way
        raise _unsupported(source, f"{key}.partial_rotary_factor", partial,
                           "use rope_type 'proportional' for Gemma 4's partial RoPE")
    if rope_type not in ("linear", "proportional"):
        raise _unsupported(source, f"{key}.rope_type", rope_type, "use default, linear or proportional")
    if partial < 1.0:
        if kind == LOCAL:
            raise _unsupported(source, f"{key}.partial_rotary_factor", partial,
                               "partial RoPE runs on full_attention layers only; use 1.0 on sliding layers")
        if _rotated_pairs(partial, head_dim) != int(partial * head_dim // 2):  # transformers turns no pair
            raise _unsupported(source, f"{key}.partial_rotary_factor", partial,
                               f"it rotates no pair of the {head_dim}-wide head; use at least {2 / head_dim:g}")
    return theta, factor, partial


def _rotated_pairs(fraction: float, head_dim: int) -> int:
    """How many rotate-half pairs our RoPE turns for `fraction` (transformers' proportional RoPE
    turns int(fraction * head_dim // 2); ours at least one)."""
    return int(np.count_nonzero(rope_inv_freq(head_dim, 10_000.0, 1.0, fraction)))


def _global_attention(cfg: Mapping[str, Any], types: list[str], head_dim: int, kv_heads: int, k_eq_v: bool,
                      source: Path) -> tuple[int, int]:
    """(head size, K/V heads) of the global layers, from either dialect."""
    per_layer = cfg.get("per_layer_config")
    if per_layer is None:  # the hub's dialect
        gd = cfg.get("global_head_dim", _HF_DEFAULTS["global_head_dim"]) or head_dim
        gkv = (cfg.get("num_global_key_value_heads") if k_eq_v else None) or kv_heads
        return int(gd), int(gkv)
    overrides: dict[int, Mapping[str, Any]] = {}
    for idx, o in dict(per_layer).items():
        i = int(idx) if str(idx).isdigit() else -1
        odd = sorted(set(o) - {"head_dim", "num_key_value_heads"})
        if odd or not 0 <= i < len(types) or types[i] != GLOBAL:
            what = f"keys {odd}" if odd else "overrides of a layer that is not full_attention"
            raise _unsupported(source, f"per_layer_config.{idx}", dict(o),
                               f"{what} cannot be run; only full_attention layers' head_dim / "
                               "num_key_value_heads may differ")
        overrides[i] = o
    shapes = {(int(overrides.get(i, {}).get("head_dim", head_dim)),
               int(overrides.get(i, {}).get("num_key_value_heads", kv_heads)))
              for i, t in enumerate(types) if t == GLOBAL}
    if len(shapes) > 1:
        raise _unsupported(source, "per_layer_config", dict(per_layer),
                           "every full_attention layer must have the same head_dim and num_key_value_heads")
    return shapes.pop()


def config_from_hf(raw: Mapping[str, Any], source: Path, label: str) -> ModelConfig:
    """Our family "gemma4" `ModelConfig` from a transformers Gemma 4 `config.json` (a named
    config when it matches one exactly)."""
    cfg = _text_config(raw, source)

    def get(key: str) -> Any:
        return cfg.get(key, _HF_DEFAULTS.get(key))

    def need(key: str) -> Any:
        if cfg.get(key) is None:
            raise WeightImportError(f"{source}: key {key!r} is missing")
        return cfg[key]

    checks = (("use_bidirectional_attention", "all", "it is an embedding model; use a causal Gemma 4"),
              ("attention_bias", True, "Gemma 4 checkpoints have no attention biases"),
              ("tie_word_embeddings", False, _TIED))
    for key, bad, fix in checks:
        if get(key) == bad:
            raise _unsupported(source, key, bad, fix)
    if get("hidden_activation") != _ACTIVATION:
        raise _unsupported(source, "hidden_activation", get("hidden_activation"), f"use {_ACTIVATION!r}")
    n, heads = int(need("num_hidden_layers")), int(need("num_attention_heads"))
    head_dim, kv_heads = int(get("head_dim")), int(get("num_key_value_heads"))
    if int(cfg.get("num_kv_shared_layers") or 0) >= n:
        raise _unsupported(source, "num_kv_shared_layers", cfg["num_kv_shared_layers"],
                           "an assistant model (every layer K/V-shared) needs a target model's keys; "
                           f"use fewer than num_hidden_layers={n}")
    types = _layer_types(cfg, n, source)
    k_eq_v = bool(cfg.get("attention_k_eq_v"))
    global_head_dim, global_kv = _global_attention(cfg, types, head_dim, kv_heads, k_eq_v, source)
    if not k_eq_v and global_kv != kv_heads:  # only per_layer_config can say this
        raise _unsupported(source, "attention_k_eq_v", False,
                           f"full_attention layers with {global_kv} K/V heads (per_layer_config; "
                           f"num_key_value_heads={kv_heads}) run here only as K=V")
    local = LOCAL in types
    # (transformers reads a type's RoPE only when some layer has that type)
    theta_local, scale_local, _ = _rope(cfg, LOCAL, head_dim, source) if local else (10_000.0, 1.0, 1.0)
    theta_global, scale_global, partial = _rope(cfg, GLOBAL, global_head_dim, source)
    pattern = types.index(GLOBAL) + 1
    regular = local and all((t == GLOBAL) == ((i + 1) % pattern == 0) for i, t in enumerate(types))
    vocab = int(need("vocab_size"))
    per_layer = int(get("hidden_size_per_layer_input") or 0)
    per_layer_vocab = int(get("vocab_size_per_layer_input") or vocab) if per_layer else None
    fields: dict[str, Any] = dict(
        family="gemma4",
        vocab_size=vocab,
        num_layers=n,
        num_heads=heads,
        num_kv_heads=kv_heads,
        embed_dim=int(need("hidden_size")),
        head_dim=head_dim,
        mlp_dim=int(need("intermediate_size")),
        query_pre_attn_scalar=1.0,  # transformers' Gemma 4 attention scaling is 1.0
        final_logit_softcap=float(cfg["final_logit_softcapping"]) if cfg.get("final_logit_softcapping") else None,
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        use_qk_norm=True,
        sliding_window=int(get("sliding_window")) if local else None,
        sliding_window_pattern=pattern if regular else None,
        layer_types=tuple(types) if local and not regular else None,
        rope_base_global=theta_global,
        rope_base_local=theta_local,
        rope_scale_global=scale_global,
        rope_scale_local=scale_local,
        norm_eps=float(get("rms_norm_eps")),
        max_seq_len=int(get("max_position_embeddings")),
        global_head_dim=global_head_dim,
        num_global_kv_heads=global_kv if k_eq_v else None,
        rope_partial_global=partial,
        num_kv_shared_layers=int(cfg.get("num_kv_shared_layers") or 0),
        use_double_wide_mlp=bool(cfg.get("use_double_wide_mlp")),
        per_layer_input_dim=per_layer,
        per_layer_vocab_size=None if per_layer_vocab == vocab else per_layer_vocab,
    )
    if cfg.get("enable_moe_block"):
        fields.update(num_experts=int(need("num_experts")), experts_per_token=int(need("top_k_experts")),
                      expert_mlp_dim=int(need("moe_intermediate_size")))
    return named_or_new(fields, label, source)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The hub-dialect `config.json` of a Gemma 4 `Gemma4ForCausalLM`; an architecture
    transformers' Gemma 4 cannot express raises naming the field."""
    c = config

    def refuse(what: str) -> WeightImportError:
        return WeightImportError(f"model {c.name}: {what}, which transformers' Gemma 4 cannot express")

    if c.attn_logit_softcap is not None:
        raise refuse(f"attn_logit_softcap={c.attn_logit_softcap} (an attention soft-cap)")
    types = [GLOBAL if c.is_global_layer(i) else LOCAL for i in range(c.num_layers)]
    if types[-1] != GLOBAL:
        raise refuse(f"layer {c.num_layers - 1} (the last) is a sliding-window layer")
    gd = c.global_head_dim or c.head_dim
    if _rotated_pairs(c.rope_partial_global, gd) != int(c.rope_partial_global * gd // 2):
        raise refuse(f"rope_partial_global={c.rope_partial_global} (ours rotates one pair of the {gd}-wide "
                     "head where transformers would rotate none)")
    local = {"rope_type": "default", "rope_theta": c.rope_base_local}
    if c.rope_scale_local != 1.0:
        local = {"rope_type": "linear", "factor": c.rope_scale_local, "rope_theta": c.rope_base_local}
    full: dict[str, Any] = {"rope_type": "proportional", "partial_rotary_factor": c.rope_partial_global,
                            "rope_theta": c.rope_base_global}
    if c.rope_scale_global != 1.0:
        full["factor"] = c.rope_scale_global
    out: dict[str, Any] = {
        "architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text", "vocab_size": c.vocab_size,
        "hidden_size": c.embed_dim, "intermediate_size": c.mlp_dim, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
        "global_head_dim": gd, "attention_k_eq_v": c.num_global_kv_heads is not None,
        "num_global_key_value_heads": c.num_global_kv_heads, "hidden_activation": _ACTIVATION,
        "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.norm_eps,
        "rope_parameters": {LOCAL: local, GLOBAL: full}, "sliding_window": c.sliding_window or c.max_seq_len,
        "layer_types": types, "final_logit_softcapping": c.final_logit_softcap,
        "hidden_size_per_layer_input": c.per_layer_input_dim,
        "vocab_size_per_layer_input": c.per_layer_vocab_size or c.vocab_size,
        "num_kv_shared_layers": c.num_kv_shared_layers, "use_double_wide_mlp": c.use_double_wide_mlp,
        "enable_moe_block": c.num_experts > 0, "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "torch_dtype": "float32",
    }
    if c.num_experts:
        out.update(num_experts=c.num_experts, top_k_experts=c.experts_per_token,
                   moe_intermediate_size=c.expert_mlp_dim)
    return out


def tensor_map(cfg: ModelConfig) -> TensorMap:
    """Our flat key (`toolkit.models.gemma4`) -> (HF key after the prefix, HF shape, HF -> ours,
    ours -> HF) for every tensor of a Gemma 4 text decoder."""
    e, n, p = cfg.embed_dim, cfg.num_layers, cfg.per_layer_input_dim
    top: TensorMap = {}
    if p:
        rows = cfg.per_layer_vocab_size or cfg.vocab_size
        top.update({
            "per_layer_embedder.input_embedding": ("embed_tokens_per_layer.weight", (rows, n * p), same, same),
            "per_layer_projection.kernel": ("per_layer_model_projection.weight", (n * p, e), transpose, transpose),
            "per_layer_projection_norm.scale": ("per_layer_projection_norm.weight", (p,), same, same),
        })
    x, f = cfg.num_experts, cfg.expert_mlp_dim

    def experts_in(part: slice) -> Any:  # (x, 2f, e) -> our (x, e, f) gate or up half
        return lambda w: w[:, part].transpose(0, 2, 1)

    def experts_t(w: np.ndarray) -> np.ndarray:  # (x, e, f) <-> (x, f, e)
        return w.transpose(0, 2, 1)

    def block(i: int) -> TensorMap:
        layer = layer_tensors("gemma3", e, cfg.num_heads, cfg.layer_kv_heads(i), cfg.layer_head_dim(i),
                              cfg.layer_mlp_dim(i), qk_norm=True)
        if cfg.kv_shared_source(i) is not None:  # attends over an earlier layer's keys and values
            for k in ("attn.k_proj.kernel", "attn.k_norm.scale", "attn.v_proj.kernel"):
                del layer[k]
        elif cfg.layer_k_eq_v(i):  # values are the key projection
            del layer["attn.v_proj.kernel"]
        if x:
            layer.update({
                "post_ffw_norm_dense.scale": ("post_feedforward_layernorm_1.weight", (e,), same, same),
                "pre_ffw_norm_moe.scale": ("pre_feedforward_layernorm_2.weight", (e,), same, same),
                "post_ffw_norm_moe.scale": ("post_feedforward_layernorm_2.weight", (e,), same, same),
                "experts.router_scale": ("router.scale", (e,), same, same),
                "experts.router_proj": ("router.proj.weight", (x, e), transpose, transpose),
                "experts.per_expert_scale": ("router.per_expert_scale", (x,), same, same),
                # gate then up: write_hf joins the two along axis 1 in this order
                "experts.gate_proj": ("experts.gate_up_proj", (x, 2 * f, e), experts_in(slice(0, f)), experts_t),
                "experts.up_proj": ("experts.gate_up_proj", (x, 2 * f, e), experts_in(slice(f, 2 * f)), experts_t),
                "experts.down_proj": ("experts.down_proj", (x, e, f), experts_t, experts_t),
            })
        if p:
            layer.update({
                "per_layer_gate.kernel": ("per_layer_input_gate.weight", (p, e), transpose, transpose),
                "per_layer_up_proj.kernel": ("per_layer_projection.weight", (e, p), transpose, transpose),
                "post_per_layer_norm.scale": ("post_per_layer_input_norm.weight", (e,), same, same),
            })
        layer["layer_scalar"] = ("layer_scalar", (1,), lambda w: w.reshape(()), lambda w: w.reshape(1))
        return layer

    return decoder_tensors(cfg, block, top)
