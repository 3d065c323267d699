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

On a mesh whose expert axis has more than one device (the rule table maps `expert`
to `fsdp`), either dispatch runs expert-parallel (`_expert_parallel`, a `shard_map`):
each device gathers the tokens of its expert group, runs only its own experts on
the tokens routed to them, and a reduce-scatter sums every token's expert outputs
back onto the device that holds the token. No device ever holds another's expert
weights; GSPMD on its own would all-gather each layer's experts instead. The mesh
is the one the compiled step is traced under (`jax.sharding.get_abstract_mesh`,
set by `toolkit.train.step`); without one, or where the shapes do not divide the
mesh, the experts run as above.

Experts are frozen (no adapters): LoRA trains the attention and the dense MLP
beside them (`toolkit.models.gemma4`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from toolkit.models import quant
from toolkit.models.configs import MOE_DISPATCH, ModelConfig, Runtime
from toolkit.models.gemma import _param, _stacked, at_least_fp32
from toolkit.train.mesh import logical_to_spec

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
    x = x.astype(at_least_fp32(x.dtype))
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> Array:
    return jax.random.normal(rngs.params(), shape, jnp.float32) * fan_in**-0.5


def _weight(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int, axes: tuple[str | None, ...],
            dtype: jnp.dtype) -> nnx.Param:
    return _param(_normal(rngs, shape, fan_in).astype(dtype), axes)


def route(x: Array, per_dim_scale: Array, proj: Array, k: int, eps: float) -> tuple[Array, Array]:
    """Each token's top-k experts (T, k) and their weights (T, k), summing to 1.

    The router reads the raw residual stream: a parameter-free RMS norm, a 1/sqrt(hidden)
    scale, a learned per-dimension scale, then logits over experts; softmax in fp32.
    """
    h = _rms(x, eps) * x.shape[-1] ** -0.5
    h = h * per_dim_scale.astype(h.dtype)
    probs = jax.nn.softmax(h @ proj.astype(h.dtype), axis=-1).astype(x.dtype)
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
    out = out * (scale[jnp.minimum(expert, gate.shape[0] - 1)] * w.reshape(-1)[order])[:, None]
    return jnp.zeros_like(x).at[token].add(out)


# The logical axes of the stacked expert weights and of the routed tokens: what
# `_expert_parallel` asks the rule table for, so its shard_map splits the arrays exactly
# as the parameters are stored.
_GATE_AXES, _DOWN_AXES, _TOKEN_AXES = ("expert", "embed", "mlp"), ("expert", "mlp", "embed"), ("batch", None)


def _axes(entry: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _expert_parallel(fn, x: Array, idx: Array, w: Array, gate: Array, up: Array, down: Array,
                     scale: Array) -> Array | None:
    """`fn`'s result, computed expert-parallel over the traced mesh; None where that does not
    apply (no mesh, one device per expert group, or shapes that do not divide).

    Within a device, the experts outside its group are masked out: their routing
    weights become 0 and (for "sorted") their rows sort past the last group, where
    `ragged_dot` writes zeros. Partial sums over a split `mlp` axis are summed over
    its mesh axis before the reduce-scatter.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    g_spec, d_spec = logical_to_spec(_GATE_AXES, gate.shape, mesh), logical_to_spec(_DOWN_AXES, down.shape, mesh)
    t_spec = logical_to_spec(_TOKEN_AXES, x.shape, mesh)
    ep = _axes(g_spec[0] if len(g_spec) else None)
    tok = _axes(t_spec[0] if len(t_spec) else None)
    if not ep or not set(ep) <= set(tok):
        return None  # experts whole on every device, or tokens not split where experts are
    mlp = _axes(g_spec[2] if len(g_spec) > 2 else None)
    n_local = gate.shape[0] // math.prod(dict(mesh.shape)[a] for a in ep)
    e_spec = P(g_spec[0])

    def local(x, idx, w, gate, up, down, scale):
        x, idx, w = (jax.lax.all_gather(a, ep, axis=0, tiled=True) for a in (x, idx, w))
        first = jax.lax.axis_index(ep) * n_local
        mine = (idx >= first) & (idx < first + n_local)
        out = fn(x, jnp.where(mine, idx - first, n_local), jnp.where(mine, w, 0), gate, up, down, scale)
        if mlp:
            out = jax.lax.psum(out, mlp)
        return jax.lax.psum_scatter(out, ep, scatter_dimension=0, tiled=True)

    return jax.shard_map(local, mesh=mesh, in_specs=(t_spec, t_spec, t_spec, g_spec, g_spec, d_spec, e_spec),
                         out_specs=t_spec)(x, idx, w, gate, up, down, scale)


def experts(x: Array, idx: Array, w: Array, gate: Array, up: Array, down: Array, scale: Array,
            impl: str) -> Array:
    """Tokens (T, H) through their chosen experts: `idx`/`w` (T, k) from `route`. An index
    equal to the number of experts means "no expert" (weight 0): how a device of an
    expert-parallel mesh skips the experts it does not hold."""
    fn = _sorted if dispatch_impl(impl) == "sorted" else _dense
    args = (x, idx, w, gate.astype(x.dtype), up.astype(x.dtype), down.astype(x.dtype), scale.astype(x.dtype))
    out = _expert_parallel(fn, *args)
    return fn(*args) if out is None else out


class MoE(nnx.Module):
    """The router and the stacked experts of one Gemma 4 layer.

    Flat names under `layers.{i}.experts.`: `router_scale` (embed,), `router_proj` (embed,
    expert), `gate_proj` / `up_proj` (expert, embed, mlp), `down_proj` (expert, mlp,
    embed), `per_expert_scale` (expert,).
    """

    # Each expert weight sums over its axis 1 (embed for gate/up, mlp for down): with a
    # quantized base (`Runtime.base_quant`) its scales span the expert and output axes, and
    # `toolkit.models.gemma.quantized_weights` finds them here.
    QUANTIZED = {"gate_proj": (1,), "up_proj": (1,), "down_proj": (1,)}

    def __init__(self, cfg: ModelConfig, rt: Runtime, *, rngs: nnx.Rngs, stack: int | None = None):
        """`stack=n`: n layers' routers and experts on a leading `layers` axis (a scanned model)."""
        e, d, f = cfg.num_experts, cfg.embed_dim, cfg.expert_mlp_dim
        dt = jnp.dtype(rt.param_dtype)
        self.quant = rt.base_quant
        self.stacked = stack is not None
        shape, axes = _stacked(stack, (d,), ("embed",))
        self.router_scale = _param(jnp.ones(shape, dt), axes)
        shape, axes = _stacked(stack, (d, e), ("embed", "expert"))
        self.router_proj = _weight(rngs, shape, d, axes, dt)
        for name, shape, axes in (("gate_proj", (e, d, f), _GATE_AXES), ("up_proj", (e, d, f), _GATE_AXES),
                                  ("down_proj", (e, f, d), _DOWN_AXES)):
            fan_in = shape[1]
            shape, axes = _stacked(stack, shape, axes)
            if self.quant == "none":
                setattr(self, name, _weight(rngs, shape, fan_in, axes, dt))
                continue
            # Stored int8 / packed int4 with fp32 scales (QLoRA's frozen base): the experts are
            # nearly all of a mixture-of-experts model's bytes.
            contracted = self.contracted_axes(name)
            q, scale = quant.quantize(_normal(rngs, shape, fan_in), contracted, self.quant, xp=jnp)
            setattr(self, name, _param(q, axes))
            setattr(self, name + quant.SCALE_SUFFIX, _param(scale, quant.scale_axes(axes, shape, contracted, self.quant)))
        shape, axes = _stacked(stack, (e,), ("expert",))
        self.per_expert_scale = _param(jnp.ones(shape, dt), axes)
        self.k, self.eps, self.impl = cfg.experts_per_token, cfg.norm_eps, rt.moe_dispatch
        self.dtype = jnp.dtype(rt.dtype)

    def contracted_axes(self, name: str) -> tuple[int, ...]:
        """The stored `name` array's contracted axes: `QUANTIZED`'s, after a scanned model's
        leading `layers` axis (inside the scan a layer's slice has `QUANTIZED`'s own)."""
        return tuple((1 if self.stacked else 0) + a for a in self.QUANTIZED[name])

    def _expert_weight(self, name: str) -> Array:
        """An expert weight in the compute dtype, dequantized when stored quantized. Elementwise
        over the stored array, so each device dequantizes only the experts it holds."""
        w = getattr(self, name)[...]
        if self.quant == "none":
            return w.astype(self.dtype)
        scale = getattr(self, name + quant.SCALE_SUFFIX)[...]
        return quant.dequantize(w, scale, self.QUANTIZED[name], self.quant, self.dtype)

    def __call__(self, residual: Array, x: Array) -> Array:
        """The experts' combined output for `x` (B, S, H, the MoE path's normed input),
        routed by the raw `residual` stream as keras-hub does."""
        shape = x.shape
        idx, w = route(residual.reshape(-1, shape[-1]).astype(self.dtype), self.router_scale[...],
                       self.router_proj[...], self.k, self.eps)
        out = experts(x.reshape(-1, shape[-1]).astype(self.dtype), idx, w, self._expert_weight("gate_proj"),
                      self._expert_weight("up_proj"), self._expert_weight("down_proj"), self.per_expert_scale[...],
                      self.impl)
        return out.reshape(shape)
