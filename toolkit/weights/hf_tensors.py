"""What transformers' Gemma checkpoints of every family share: the tensor-map type, one
decoder block's names, and picking the named config a checkpoint's sizes describe. Its
own module so that `toolkit.weights.hf` (Gemma 1-3, and the reader) and
`toolkit.weights.hf_gemma4` both build on it without importing each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from toolkit.models.configs import ModelConfig, get_config, named_configs
from toolkit.weights.errors import WeightImportError

Convert = Callable[[np.ndarray], np.ndarray]
# Our flat key -> (HF key after the prefix, HF shape, HF -> ours, ours -> HF).
TensorMap = dict[str, tuple[str, tuple[int, ...], Convert, Convert]]


def same(w: np.ndarray) -> np.ndarray:
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    """torch's `nn.Linear` (out, in) <-> our (in, out) kernel; its own inverse."""
    return w.T


def decoder_tensors(cfg: ModelConfig, layer: Callable[[int], TensorMap], top: TensorMap | None = None) -> TensorMap:
    """A whole decoder's map: the tied embedding and final norm, `top` (a family's other
    model-level tensors), and `layer(i)`'s block names under `layers.{i}.` on both sides."""
    e = cfg.embed_dim
    out: TensorMap = {"embedder.input_embedding": ("embed_tokens.weight", (cfg.vocab_size, e), same, same),
                      "final_norm.scale": ("norm.weight", (e,), same, same), **(top or {})}
    for i in range(cfg.num_layers):
        out.update({f"layers.{i}.{k}": (f"layers.{i}.{hf}", s, a, z) for k, (hf, s, a, z) in layer(i).items()})
    return out


def layer_tensors(family: str, e: int, h: int, kv: int, d: int, f: int, qk_norm: bool) -> TensorMap:
    """One decoder block's attention, MLP and norms, layer-relative (HF names under `layers.{i}.`):
    embed e, h query / kv key-value heads of size d, MLP width f. Gemma 4 starts from the
    Gemma 2/3 names and drops or adds per layer (`toolkit.weights.hf_gemma4`)."""

    def heads_in(n: int) -> Convert:  # (n*d, e) -> (n, e, d)
        return lambda w: w.reshape(n, d, e).transpose(0, 2, 1)

    def heads_out(n: int) -> Convert:  # (n, e, d) -> (n*d, e)
        return lambda k: k.transpose(0, 2, 1).reshape(n * d, e)

    layer: TensorMap = {
        "pre_attention_norm.scale": ("input_layernorm.weight", (e,), same, same),
        "attn.q_proj.kernel": ("self_attn.q_proj.weight", (h * d, e), heads_in(h), heads_out(h)),
        "attn.k_proj.kernel": ("self_attn.k_proj.weight", (kv * d, e), heads_in(kv), heads_out(kv)),
        "attn.v_proj.kernel": ("self_attn.v_proj.weight", (kv * d, e), heads_in(kv), heads_out(kv)),
        "attn.o_proj.kernel": ("self_attn.o_proj.weight", (e, h * d), lambda w: w.T.reshape(h, d, e),
                               lambda k: k.reshape(h * d, e).T),
        "mlp.gate_proj.kernel": ("mlp.gate_proj.weight", (f, e), transpose, transpose),
        "mlp.up_proj.kernel": ("mlp.up_proj.weight", (f, e), transpose, transpose),
        "mlp.down_proj.kernel": ("mlp.down_proj.weight", (e, f), transpose, transpose),
    }
    if family == "gemma":  # Gemma 1 calls its pre-FFW norm "post_attention_layernorm"
        layer["pre_ffw_norm.scale"] = ("post_attention_layernorm.weight", (e,), same, same)
    else:
        layer["pre_ffw_norm.scale"] = ("pre_feedforward_layernorm.weight", (e,), same, same)
        layer["post_attention_norm.scale"] = ("post_attention_layernorm.weight", (e,), same, same)
        layer["post_ffw_norm.scale"] = ("post_feedforward_layernorm.weight", (e,), same, same)
    if qk_norm:
        layer["attn.q_norm.scale"] = ("self_attn.q_norm.weight", (d,), same, same)
        layer["attn.k_norm.scale"] = ("self_attn.k_norm.weight", (d,), same, same)
    return layer


def named_or_new(fields: Mapping[str, Any], label: str, source: Path) -> ModelConfig:
    """The named config (`toolkit.models.configs`) that `fields` describe exactly, else a new
    one called `hf:LABEL`: a checkpoint of a known size reads as that size's name. A field
    combination our model rejects is named as this checkpoint's error."""
    try:
        config = ModelConfig(name=f"hf:{label}", **fields)
    except ValueError as e:
        raise WeightImportError(f"{source}: {e}") from None
    for name in named_configs():
        named = get_config(name)
        if named.replace(name=config.name) == config:
            return named
    return config
