"""FLOP counts and model-FLOP utilisation (MFU): the one place the formula lives.

Forward FLOPs per token = 2 per multiply-add of every decoder-layer weight
(q, k, v, o and the three MLP projections; the embedding is a lookup and
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


def forward_flops_per_token(cfg: Any, context: float) -> float:
    """Forward FLOPs per token of a Gemma `ModelConfig` at mean attended length `context`."""
    per_layer = (cfg.embed_dim * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
                 + 3 * cfg.embed_dim * cfg.mlp_dim)
    attention = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context / 2
    return 2 * per_layer * cfg.num_layers + attention


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
