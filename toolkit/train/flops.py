"""FLOP counts and model-FLOP utilisation (MFU): the one place the formula lives.

Forward FLOPs per token = 2 per multiply-add of every decoder-layer weight
(q, k, v, o and the three MLP projections, per layer since Gemma 4's layers differ,
and a mixture-of-experts layer's router and active experts; the embedding is a lookup and
classification projects onto a handful of class rows, so neither counts)
plus attention scores and values, 4 * layers * heads * head_dim * context,
halved because the mask is causal. A LoRA train step costs 2x the forward:
the backward pass needs input gradients (1x) but, with the base frozen, no
weight gradients (the 3rd x of the usual 6N rule). Adapter FLOPs (rank r
much smaller than the widths) are left out.

MFU = achieved FLOP/s / (devices x peak FLOP/s per device). Peaks are the
vendors' dense bf16 numbers; for CPUs there is no datasheet number, so give
`peak_tflops` (this project's 2-core CPU: 0.19 TFLOP/s fp32 measured).
"""

from __future__ import annotations

from typing import Any

# Dense bf16 peak per device, TFLOP/s, by `jax.devices()[0].device_kind` prefix.
PEAK_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "NVIDIA H100": 989.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100": 312.0,
    "NVIDIA L4": 121.0,
}


def layer_weights(cfg: Any, i: int, *, active: bool = True) -> int:
    """Multiply-adds per token of layer i's projections: q, k, v, o at that layer's head
    size and K/V heads (none for K/V it reuses, no v where K=V), its MLP, and for a
    mixture-of-experts layer the router plus `experts_per_token` experts (`active`) or
    all of them (`active=False`: the parameter count)."""
    d, h, heads, kv = cfg.embed_dim, cfg.layer_head_dim(i), cfg.num_heads, cfg.layer_kv_heads(i)
    own_kv = cfg.kv_shared_source(i) is None
    n = d * h * (2 * heads + (kv * (1 if cfg.layer_k_eq_v(i) else 2) if own_kv else 0))
    n += 3 * d * cfg.layer_mlp_dim(i)
    if cfg.num_experts:
        n += d * cfg.num_experts + 3 * d * cfg.expert_mlp_dim * (cfg.experts_per_token if active
                                                                  else cfg.num_experts)
    return n


def decoder_params(cfg: Any, *, active: bool = False) -> int:
    """Weights of the decoder (norms left out): every layer's projections (all experts, or
    with `active` those a token uses) plus the embedding and any per-layer input tables."""
    per_layer_inputs = cfg.per_layer_input_dim * cfg.num_layers * (
        (cfg.per_layer_vocab_size or cfg.vocab_size) + cfg.embed_dim) if cfg.per_layer_input_dim else 0
    layers = sum(layer_weights(cfg, i, active=active) for i in range(cfg.num_layers))
    return layers + cfg.vocab_size * cfg.embed_dim + per_layer_inputs


def forward_flops_per_token(cfg: Any, context: float) -> float:
    """Forward FLOPs per token of a Gemma `ModelConfig` at mean attended length `context`."""
    weights = sum(layer_weights(cfg, i) for i in range(cfg.num_layers))
    attention = sum(4 * cfg.num_heads * cfg.layer_head_dim(i) * context / 2 for i in range(cfg.num_layers))
    return 2 * weights + attention


def train_flops_per_token(cfg: Any, context: float) -> float:
    """A LoRA train step: forward + input gradients, no frozen-weight gradients."""
    return 2 * forward_flops_per_token(cfg, context)


def peak_flops(device_kind: str, peak_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device: `peak_tflops` if given, else the table, else None."""
    if peak_tflops:
        return peak_tflops * 1e12
    for prefix, tf in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if device_kind.startswith(prefix):
            return tf * 1e12
    return None


def mfu(flops_per_s: float, device_kind: str, num_devices: int, peak_tflops: float | None = None) -> float | None:
    peak = peak_flops(device_kind, peak_tflops)
    return None if peak is None else flops_per_s / (peak * num_devices)
