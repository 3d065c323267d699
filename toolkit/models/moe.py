"""Gemma 4's mixture-of-experts feed-forward (the 26B-A4B), matching keras-hub 0.32's
`Gemma4Router` + `Gemma4MoEBlock`.

A router picks `experts_per_token` of `num_experts` GeGLU experts per token and
weighs them by their renormalised softmax probabilities; each expert's output is
multiplied by its learned `per_expert_scale`. The experts' weights are stacked
3-D arrays whose leading axis has the logical name `expert`, so the one rule table
(`toolkit.train.mesh`) spreads whole experts over devices.

Two ways to run the experts, chosen in one place (`dispatch_impl`):

* "sorted": the (token, expert) pairs are sorted by expert and each expert's rows
  go through one grouped matmul (`jax.lax.ragged_dot`), so the work and the
  intermediate tensors are tokens x k x mlp, never tokens x experts x hidden.
  The default on GPU and TPU.
* "dense": every expert on every token, combined with the routing weights (what
  keras-hub does). Exact but E/k times the FLOPs; the default on CPU, where the
  test models are tiny and XLA's ragged_dot is itself a masked dense loop.

Experts are frozen (no adapters): LoRA trains the attention and the dense MLP
beside them (`toolkit.models.gemma4`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from toolkit.models.configs import MOE_DISPATCH, ModelConfig, Runtime
from toolkit.models.gemma import _param

Array = jax.Array

def dispatch_impl(choice: str) -> str:
    """The expert dispatch a run uses: `choice`, or for "auto" the grouped matmul on
    accelerators and the dense einsum on CPU."""
    if choice not in MOE_DISPATCH:
        raise ValueError(f"moe_dispatch={choice!r} is not one of {MOE_DISPATCH}")
    if choice != "auto":
        return choice
    return "dense" if jax.default_backend() == "cpu" else "sorted"


def _rms(x: Array, eps: float) -> Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def _weight(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int, axes: tuple[str | None, ...],
            dtype: jnp.dtype) -> nnx.Param:
    return _param((jax.random.normal(rngs.params(), shape, jnp.float32) * fan_in**-0.5).astype(dtype), axes)


def route(x: Array, per_dim_scale: Array, proj: Array, k: int, eps: float) -> tuple[Array, Array]:
    """Each token's top-k experts (T, k) and their weights (T, k), summing to 1.

    The router reads the raw residual stream: a parameter-free RMS norm, a 1/sqrt(hidden)
    scale, a learned per-dimension scale, then logits over experts; softmax in fp32.
    """
    h = _rms(x, eps) * x.shape[-1] ** -0.5 * per_dim_scale.astype(jnp.float32)
    probs = jax.nn.softmax(h @ proj.astype(jnp.float32), axis=-1).astype(x.dtype)
    top_p, top_i = jax.lax.top_k(probs, k)
    top_p = top_p / jnp.maximum(jnp.sum(top_p, axis=-1, keepdims=True), 1e-9)
    return top_i, top_p


def _dense(x: Array, idx: Array, w: Array, gate: Array, up: Array, down: Array, scale: Array) -> Array:
    h = jax.nn.gelu(jnp.einsum("th,ehi->eti", x, gate), approximate=True) * jnp.einsum("th,ehi->eti", x, up)
    out = jnp.einsum("eti,eih->eth", h, down) * scale[:, None, None]
    combine = jnp.sum(jax.nn.one_hot(idx, gate.shape[0], dtype=x.dtype) * w[..., None], axis=1)  # (T, E)
    return jnp.einsum("eth,te->th", out, combine)


def _sorted(x: Array, idx: Array, w: Array, gate: Array, up: Array, down: Array, scale: Array) -> Array:
    t, k = idx.shape
    flat = idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    expert = flat[order]
    token = order // k
    groups = jnp.bincount(flat, length=gate.shape[0]).astype(jnp.int32)
    rows = x[token]  # (T*k, H), grouped by expert
    h = jax.nn.gelu(jax.lax.ragged_dot(rows, gate, groups), approximate=True) * jax.lax.ragged_dot(rows, up, groups)
    out = jax.lax.ragged_dot(h, down, groups)
    out = out * (scale[expert] * w.reshape(-1)[order])[:, None]
    return jnp.zeros_like(x).at[token].add(out)


def experts(x: Array, idx: Array, w: Array, gate: Array, up: Array, down: Array, scale: Array,
            impl: str) -> Array:
    """Tokens (T, H) through their chosen experts: `idx`/`w` (T, k) from `route`."""
    fn = _sorted if dispatch_impl(impl) == "sorted" else _dense
    return fn(x, idx, w, gate.astype(x.dtype), up.astype(x.dtype), down.astype(x.dtype), scale.astype(x.dtype))


class MoE(nnx.Module):
    """The router and the stacked experts of one Gemma 4 layer.

    Flat names under `layers.{i}.experts.`: `router_scale` (embed,), `router_proj` (embed,
    expert), `gate_proj` / `up_proj` (expert, embed, mlp), `down_proj` (expert, mlp,
    embed), `per_expert_scale` (expert,).
    """

    def __init__(self, cfg: ModelConfig, rt: Runtime, *, rngs: nnx.Rngs):
        e, d, f = cfg.num_experts, cfg.embed_dim, cfg.expert_mlp_dim
        dt = jnp.dtype(rt.param_dtype)
        self.router_scale = _param(jnp.ones((d,), dt), ("embed",))
        self.router_proj = _weight(rngs, (d, e), d, ("embed", "expert"), dt)
        self.gate_proj = _weight(rngs, (e, d, f), d, ("expert", "embed", "mlp"), dt)
        self.up_proj = _weight(rngs, (e, d, f), d, ("expert", "embed", "mlp"), dt)
        self.down_proj = _weight(rngs, (e, f, d), f, ("expert", "mlp", "embed"), dt)
        self.per_expert_scale = _param(jnp.ones((e,), dt), ("expert",))
        self.k, self.eps, self.impl = cfg.experts_per_token, cfg.norm_eps, rt.moe_dispatch
        self.dtype = jnp.dtype(rt.dtype)

    def __call__(self, residual: Array, x: Array) -> Array:
        """The experts' combined output for `x` (B, S, H, the MoE path's normed input),
        routed by the raw `residual` stream as keras-hub does."""
        shape = x.shape
        idx, w = route(residual.reshape(-1, shape[-1]).astype(self.dtype), self.router_scale[...],
                       self.router_proj[...], self.k, self.eps)
        out = experts(x.reshape(-1, shape[-1]).astype(self.dtype), idx, w, self.gate_proj[...], self.up_proj[...],
                      self.down_proj[...], self.per_expert_scale[...], self.impl)
        return out.reshape(shape)
