"""Gemma 1, 2 and 3 (text) as one Flax NNX module tree.

The families differ only in switches on `ModelConfig` (soft-caps, post norms,
QK-norm, local/global layers, RoPE bases), so one tree serves all of them and
every importer writes the same flat layout:

    embedder.input_embedding              (vocab, embed)
    layers.{i}.pre_attention_norm.scale   (embed,)
    layers.{i}.attn.q_proj.kernel         (heads, embed, head_dim)
    layers.{i}.attn.{k,v}_proj.kernel     (kv_heads, embed, head_dim)
    layers.{i}.attn.o_proj.kernel         (heads, head_dim, embed)
    layers.{i}.attn.{q,k}_norm.scale      (head_dim,)      Gemma 3
    layers.{i}.post_attention_norm.scale  (embed,)         Gemma 2/3
    layers.{i}.pre_ffw_norm.scale         (embed,)
    layers.{i}.mlp.{gate,up}_proj.kernel  (embed, mlp)     gate goes through GeLU
    layers.{i}.mlp.down_proj.kernel       (mlp, embed)
    layers.{i}.post_ffw_norm.scale        (embed,)         Gemma 2/3
    final_norm.scale                      (embed,)

Kernels use keras-hub's orientation and norms its `x * (1 + scale)` form, so a
keras-hub preset maps one-to-one and parity tests compare like with like.
Every parameter carries logical axis names (vocab, embed, heads, kv_heads,
head_dim, mlp) for the mesh rule table; nothing here knows about meshes.

Gemma 4 (`toolkit.models.gemma4.Gemma4`) reuses these pieces in its own tree;
`toolkit.models.build` (`build_model`, `from_params`) picks the class by family.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit.models import layout, quant
from toolkit.models.configs import ModelConfig, Runtime
from toolkit.models.lora import Einsum, LoRAConfig

Array = jax.Array


def _param(value: Array, axes: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(value, sharding_names=axes, eager_sharding=False)


def _stacked(stack: int | None, shape: tuple[int, ...], axes: tuple[str | None, ...]):
    """Shape and axis names with the scanned model's leading `layers` axis (no mesh rule)."""
    if stack is None:
        return shape, axes
    return (stack, *shape), ("layers", *axes)


class RMSNorm(nnx.Module):
    """Gemma's RMSNorm, `x / rms(x) * (1 + scale)`, always reduced in fp32.

    Gemma 4 stores the gain itself: `scale_offset=0.0` gives `x / rms(x) * scale`
    (initialised to ones), and `with_scale=False` a parameter-free `x / rms(x)`
    (its value norm).
    """

    def __init__(self, dim: int, axis_name: str, *, eps: float, param_dtype: Any, dtype: Any,
                 stack: int | None = None, scale_offset: float = 1.0, with_scale: bool = True):
        self.eps = eps
        self.dtype = dtype
        self.scale_offset = scale_offset
        self.with_scale = with_scale
        if with_scale:
            shape, axes = _stacked(stack, (dim,), (axis_name,))
            init = jnp.zeros if scale_offset == 1.0 else jnp.ones
            self.scale = _param(init(shape, param_dtype), axes)

    def __call__(self, x: Array) -> Array:
        wide = at_least_fp32(x.dtype)
        x32 = x.astype(wide)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        if self.with_scale:
            y = y * (self.scale_offset + self.scale[...].astype(wide))
        return y.astype(self.dtype)


# A global layer's "window": wider than any sequence, so windowing is a no-op and
# local and global layers can share one scanned body.
GLOBAL_WINDOW = 2**30


def layer_tables(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer RoPE inverse frequencies (layers, head_dim / 2) and attention windows (layers,).

    These are what differ between Gemma 2/3's local and global layers; as
    data rather than Python branches they become scanned inputs of one layer
    body. `rope_scale` is linear position interpolation (Gemma 3 4B's global
    layers use 8).
    """
    inv, win = [], []
    for i in range(cfg.num_layers):
        g = cfg.is_global_layer(i)
        base, scale = ((cfg.rope_base_global, cfg.rope_scale_global) if g
                       else (cfg.rope_base_local, cfg.rope_scale_local))
        inv.append(rope_inv_freq(cfg.head_dim, base, scale))
        win.append(GLOBAL_WINDOW if g else cfg.sliding_window)
    return np.stack(inv).astype(np.float32), np.asarray(win, np.int32)


def rope_inv_freq(head_dim: int, base: float, scale: float = 1.0, fraction: float = 1.0) -> np.ndarray:
    """RoPE inverse frequencies (head_dim / 2,) for `apply_rope`: `base ** (-2j / head_dim) / scale`.

    `fraction` < 1 is Gemma 4's partial ("proportional") RoPE as keras-hub does it:
    only the first `rotary // 2` pairs (i, i + head_dim / 2) turn, rotary =
    int(fraction * head_dim) rounded down to even (at least 2), with the full
    head's frequencies; the other pairs get frequency 0, i.e. pass unchanged.
    """
    half = head_dim // 2
    exponents = -np.arange(half, dtype=np.float32) * np.float32(2.0 / head_dim)
    inv = np.power(np.float32(base), exponents) / np.float32(scale)
    if fraction < 1.0:
        rotary = int(fraction * head_dim)
        rotary = max(2, rotary - rotary % 2)
        inv[rotary // 2:] = 0.0
    return inv.astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotate-half RoPE on (batch, seq, heads, head_dim) at integer `positions`."""
    half = x.shape[-1] // 2
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (b, t, half)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def _softcap(x: Array, cap: float | None) -> Array:
    return x if cap is None else jnp.tanh(x / cap) * cap


def weight_kw(rt: Runtime) -> dict[str, Any]:
    """The storage, compute dtype and quantization every frozen projection is built with."""
    return dict(param_dtype=jnp.dtype(rt.param_dtype), dtype=jnp.dtype(rt.dtype), quant=rt.base_quant)


def _targets(lora: LoRAConfig | None, name: str) -> LoRAConfig | None:
    return lora if lora is not None and name in lora.targets else None


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rt: Runtime, *, lora: LoRAConfig | None, rngs: nnx.Rngs,
                 stack: int | None = None):
        self.cfg = cfg
        kw = dict(**weight_kw(rt), rngs=rngs, stack=stack)
        n, k, d, h = cfg.num_heads, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim
        self.q_proj = Einsum("btd,ndh->btnh", (n, d, h), ("heads", "embed", "head_dim"),
                             lora=_targets(lora, "q"), **kw)
        self.k_proj = Einsum("btd,kdh->btkh", (k, d, h), ("kv_heads", "embed", "head_dim"),
                             lora=_targets(lora, "k"), **kw)
        self.v_proj = Einsum("btd,kdh->btkh", (k, d, h), ("kv_heads", "embed", "head_dim"),
                             lora=_targets(lora, "v"), **kw)
        self.o_proj = Einsum("btnh,nhd->btd", (n, h, d), ("heads", "head_dim", "embed"),
                             lora=_targets(lora, "o"), **kw)
        if cfg.use_qk_norm:
            norm_kw = dict(eps=cfg.norm_eps, param_dtype=kw["param_dtype"], dtype=kw["dtype"], stack=stack)
            self.q_norm = RMSNorm(h, "head_dim", **norm_kw)
            self.k_norm = RMSNorm(h, "head_dim", **norm_kw)

    def keys_values(self, x: Array, positions: Array, inv_freq: Array) -> tuple[Array, Array]:
        """Post-norm, post-RoPE keys and the values of `x`: what a shared prefix contributes."""
        k, v = self.k_proj(x), self.v_proj(x)
        if self.cfg.use_qk_norm:
            k = self.k_norm(k)
        return apply_rope(k, positions, inv_freq), v

    def __call__(self, x: Array, positions: Array, mask: Array, inv_freq: Array, window: Array | int,
                 prefix: tuple[Array, Array] | None = None, key_positions: Array | None = None) -> Array:
        """`mask` is (batch, q, k) bool: segments, padding and causality, before windowing.

        `prefix` holds keys/values (1, P, kv_heads, head_dim) of tokens every row
        shares (a prompt's instruction head), prepended to this batch's keys;
        `key_positions` (batch, P + seq) then gives every key's position.
        """
        cfg = self.cfg
        q = self.q_proj(x)
        if cfg.use_qk_norm:
            q = self.q_norm(q)
        k, v = self.keys_values(x, positions, inv_freq)
        q = apply_rope(q, positions, inv_freq)
        return self.o_proj(attend(cfg, q, k, v, positions, mask, window, prefix, key_positions))


def at_least_fp32(dtype: Any) -> Any:
    """Norms, softmaxes and losses run in fp32, or wider in an fp64 check (`Runtime`)."""
    return jnp.promote_types(dtype, jnp.float32)


def attend(cfg: ModelConfig, q: Array, k: Array, v: Array, positions: Array, mask: Array, window: Array | int,
           prefix: tuple[Array, Array] | None = None, key_positions: Array | None = None) -> Array:
    """Attention of post-RoPE queries over keys/values, after the shared `prefix` ones when given;
    `mask` before windowing, as `Attention.__call__` takes it (Gemma 1-3 and 4 alike)."""
    if prefix is not None:
        b = q.shape[0]
        k = jnp.concatenate([jnp.broadcast_to(prefix[0], (b, *prefix[0].shape[1:])).astype(k.dtype), k], axis=1)
        v = jnp.concatenate([jnp.broadcast_to(prefix[1], (b, *prefix[1].shape[1:])).astype(v.dtype), v], axis=1)
    kpos = positions if key_positions is None else key_positions
    mask = mask & (jnp.abs(positions[:, :, None] - kpos[:, None, :]) < window)
    scale = cfg.query_pre_attn_scalar**-0.5
    if cfg.attn_logit_softcap is None and q.dtype != jnp.float64:
        # cuDNN flash attention on GPU, XLA's fused attention elsewhere (its softmax is fp32
        # whatever the inputs: an fp64 check takes the written-out path).
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale)
    return _attention_softcapped(q, k, v, mask, scale, cfg)  # Gemma 2's logit soft-cap: written out


def _attention_softcapped(q: Array, k: Array, v: Array, mask: Array, scale: float, cfg: ModelConfig) -> Array:
    q = q * jnp.asarray(scale, q.dtype)
    b, t, n, hd = q.shape
    kv = k.shape[2]  # the layer's own K/V heads (Gemma 4's global layers may have fewer)
    q = q.reshape(b, t, kv, n // kv, hd)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k)
    wide = at_least_fp32(logits.dtype)
    logits = _softcap(logits, cfg.attn_logit_softcap).astype(wide)
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(wide).min)
    probs = jax.nn.softmax(logits, axis=-1)
    # A query that may attend to nothing (padding before any token) gets zeros,
    # not a uniform average over masked keys.
    probs = jnp.where(mask.any(-1)[:, None, None, :, None], probs, 0.0).astype(v.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n, hd)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rt: Runtime, *, lora: LoRAConfig | None, rngs: nnx.Rngs,
                 stack: int | None = None, mlp_dim: int | None = None):
        """GeGLU of `mlp_dim` (default `cfg.mlp_dim`; Gemma 4's K/V-shared layers may be twice as wide)."""
        kw = dict(**weight_kw(rt), rngs=rngs, stack=stack)
        d, f = cfg.embed_dim, mlp_dim or cfg.mlp_dim
        self.gate_proj = Einsum("btd,df->btf", (d, f), ("embed", "mlp"), lora=_targets(lora, "gate"), **kw)
        self.up_proj = Einsum("btd,df->btf", (d, f), ("embed", "mlp"), lora=_targets(lora, "up"), **kw)
        self.down_proj = Einsum("btf,fd->btd", (f, d), ("mlp", "embed"), lora=_targets(lora, "down"), **kw)

    def __call__(self, x: Array) -> Array:
        return self.down_proj(jax.nn.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """One decoder block, or (with `stack=n`) n blocks' weights stacked for `lax.scan`."""

    def __init__(self, cfg: ModelConfig, rt: Runtime, *, lora: LoRAConfig | None, rngs: nnx.Rngs,
                 stack: int | None = None):
        norm_kw = dict(eps=cfg.norm_eps, param_dtype=jnp.dtype(rt.param_dtype), dtype=jnp.dtype(rt.dtype),
                       stack=stack)
        self.pre_attention_norm = RMSNorm(cfg.embed_dim, "embed", **norm_kw)
        self.attn = Attention(cfg, rt, lora=lora, rngs=rngs, stack=stack)
        if cfg.use_post_attn_norm:
            self.post_attention_norm = RMSNorm(cfg.embed_dim, "embed", **norm_kw)
        self.pre_ffw_norm = RMSNorm(cfg.embed_dim, "embed", **norm_kw)
        self.mlp = MLP(cfg, rt, lora=lora, rngs=rngs, stack=stack)
        if cfg.use_post_ffw_norm:
            self.post_ffw_norm = RMSNorm(cfg.embed_dim, "embed", **norm_kw)
        self.use_post_attn_norm = cfg.use_post_attn_norm
        self.use_post_ffw_norm = cfg.use_post_ffw_norm

    def __call__(self, x: Array, positions: Array, mask: Array, inv_freq: Array, window: Array | int,
                 prefix: tuple[Array, Array] | None = None, key_positions: Array | None = None) -> Array:
        a = self.attn(self.pre_attention_norm(x), positions, mask, inv_freq, window, prefix, key_positions)
        if self.use_post_attn_norm:
            a = self.post_attention_norm(a)
        x = x + a
        f = self.mlp(self.pre_ffw_norm(x))
        if self.use_post_ffw_norm:
            f = self.post_ffw_norm(f)
        return x + f


# `Runtime.remat`'s names (checked there) as JAX policies; "none" never reaches jax.checkpoint.
_JAX_REMAT = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _remat_policy(remat: str) -> Any:
    return _JAX_REMAT[remat]


# A layer function: (layer, carried activations, this layer's scanned inputs) -> (activations, per-layer output).
LayerFn = Callable[[DecoderLayer, Array, Any], tuple[Array, Any]]


def _run_scanned(stacked: DecoderLayer, fn: LayerFn, x: Array, xs: Any, remat: str) -> tuple[Array, Any]:
    """`fn` over the stacked layers under `lax.scan`: one compiled body however deep the model.

    Weights (and `xs`) are sliced per layer; RNG streams (LoRA dropout) are
    carried, so each layer draws fresh keys exactly as in the unrolled loop.
    With remat the body runs under `jax.checkpoint`, so the backward pass
    recomputes one layer's activations at a time instead of keeping them all.
    """
    graphdef, params, rest = nnx.split(stacked, nnx.Param, ...)

    def body(carry, sliced):
        h, rest = carry
        p, xs_i = sliced
        layer = nnx.merge(graphdef, p, rest)
        h, y = fn(layer, h, xs_i)
        return (h, nnx.state(layer, nnx.Not(nnx.Param))), y

    if remat != "none":
        body = jax.checkpoint(body, policy=_remat_policy(remat), prevent_cse=False)
    (x, rest), ys = jax.lax.scan(body, (x, rest), (params, xs))
    nnx.update(stacked, rest)
    return x, ys


def _remat_layer(fn: LayerFn, remat: str) -> LayerFn:
    """The unrolled model's remat: each layer's `fn` under `jax.checkpoint`."""
    if remat == "none":
        return fn
    policy = _remat_policy(remat)

    def run(layer: DecoderLayer, x: Array, xs_i: Any) -> tuple[Array, Any]:
        graphdef, state = nnx.split(layer)

        def pure(state, x, xs_i):
            inner = nnx.merge(graphdef, state)
            out = fn(inner, x, xs_i)
            return out, nnx.state(inner, nnx.RngState)

        out, rng = jax.checkpoint(pure, policy=policy)(state, x, xs_i)
        # Dropout streams advance exactly as they would without remat.
        nnx.update(layer, rng)
        return out

    return run


def _run_unrolled(layers: nnx.List, fn: LayerFn, x: Array, xs: Any, remat: str) -> tuple[Array, Any]:
    """The same contract as `_run_scanned`, as a Python loop (one program region per layer)."""
    run = _remat_layer(fn, remat)
    ys = []
    for i, layer in enumerate(layers):
        x, y = run(layer, x, jax.tree.map(lambda a: a[i], xs))
        ys.append(y)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *ys) if ys and ys[0] is not None else None


class Embedder(nnx.Module):
    """The tied embedding; with a quantized base, one scale per row (per group of a row for int4)."""

    CONTRACTED = (1,)  # a row's entries share its scale: the projection sums over them

    def __init__(self, cfg: ModelConfig, rt: Runtime, *, rngs: nnx.Rngs, rows: int | None = None,
                 dim: int | None = None, axes: tuple[str, str] = ("vocab", "embed")):
        """`rows` x `dim` (default vocab_size x embed_dim); Gemma 4's per-layer table is another."""
        shape = (rows or cfg.vocab_size, dim or cfg.embed_dim)
        init = jax.nn.initializers.normal(stddev=shape[1]**-0.5)
        self.quant = rt.base_quant
        if self.quant == "none":
            self.input_embedding = _param(init(rngs.params(), shape, jnp.dtype(rt.param_dtype)), axes)
        else:
            q, scale = quant.quantize(init(rngs.params(), shape, jnp.float32), self.CONTRACTED, self.quant, xp=jnp)
            self.input_embedding = _param(q, axes)
            self.input_embedding_scale = _param(scale, quant.scale_axes(axes, shape, self.CONTRACTED, self.quant))

    def rows(self, dtype: Any, token_ids: Array | None = None) -> Array:
        """The embedding rows of `token_ids` (any shape; all rows when None) in `dtype`."""
        table = self.input_embedding[...]
        if token_ids is not None:
            table = jnp.take(table, token_ids, axis=0)
        if self.quant == "none":
            return table.astype(dtype)
        scale = self.input_embedding_scale[...]
        if token_ids is not None:
            scale = jnp.take(scale, token_ids, axis=0)
        return quant.dequantize(table, scale, (table.ndim - 1,), self.quant, dtype)


def row_masks(b: int, t: int, p: int, padding_mask: Array | None, positions: Array | None,
              segment_ids: Array | None, prefix_mask: Array | None) -> tuple[Array, Array, Array | None]:
    """`hidden_states`' positions (b, t), attention mask (b, t, p + t) before windowing, and
    key positions (b, p + t) (None without a shared head of `p` tokens); see its docstring."""
    if segment_ids is None:
        segment_ids = (jnp.ones((b, t), jnp.int32) if padding_mask is None
                       else padding_mask.astype(jnp.int32))
    real = segment_ids > 0
    if positions is None:
        positions = jnp.broadcast_to(p + jnp.arange(t), (b, t))
    # Padding queries see only themselves: no row of the mask is empty, so every
    # attention implementation stays finite, and no real token ever sees padding.
    eye = jnp.eye(t, dtype=bool)[None]
    mask = (jnp.tril(jnp.ones((t, t), bool))[None] & (segment_ids[:, :, None] == segment_ids[:, None, :])
            & (real[:, None, :] | eye))
    key_positions = None
    if p:
        head_cols = real[:, :, None] if prefix_mask is None else real[:, :, None] & prefix_mask[None, None, :]
        mask = jnp.concatenate([jnp.broadcast_to(head_cols, (b, t, p)), mask], axis=-1)
        key_positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (b, p)), positions], axis=1)
    return positions, mask, key_positions


class Gemma(nnx.Module):
    """A Gemma decoder; `lora` adds adapters (nnx.LoRAParam) to the chosen projections.

    `runtime` says how it runs (`toolkit.models.configs.Runtime`; default: bf16 storage,
    fp32 compute, "dots" remat, scanned). With `runtime.scan_layers` all layers' weights
    are stacked on a leading `layers` axis and one layer body runs under `lax.scan`, so
    compile time does not grow with depth (MaxText scans for the same reason); otherwise
    the layers are a Python list, unrolled into the program.
    """

    def __init__(self, config: ModelConfig, *, runtime: Runtime | None = None, lora: LoRAConfig | None = None,
                 rngs: nnx.Rngs):
        rt = self._runtime(config, runtime)
        self.lora = lora
        self.dtype = jnp.dtype(rt.dtype)
        self.embedder = Embedder(config, rt, rngs=rngs)
        if rt.scan_layers:
            self.layers = DecoderLayer(config, rt, lora=lora, rngs=rngs, stack=config.num_layers)
        else:
            self.layers = nnx.List([DecoderLayer(config, rt, lora=lora, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.embed_dim, "embed", eps=config.norm_eps,
                                  param_dtype=jnp.dtype(rt.param_dtype), dtype=self.dtype)

    def _runtime(self, config: ModelConfig, runtime: Runtime | None) -> Runtime:
        """Keep what the model is and how it runs (checked against each other), and the adapters."""
        rt = runtime if runtime is not None else Runtime()
        rt.check(config)
        self.config, self.runtime = config, rt
        return rt

    @property
    def scanned(self) -> bool:
        """Whether the layers' weights are stacked on a leading `layers` axis (`Runtime.scan_layers`)."""
        return self.runtime.scan_layers

    @property
    def stacking(self) -> layout.Stacking:
        """Which of the model's own names hold which layers (`toolkit.models.layout`)."""
        return layout.stacking(self.config, self.scanned)

    def _embed(self, tokens: Array) -> Array:
        x = self.embedder.rows(self.dtype, tokens)
        return x * jnp.sqrt(jnp.float32(self.config.embed_dim)).astype(self.dtype)

    def _run_layers(self, fn: LayerFn, x: Array, xs: Any) -> tuple[Array, Any]:
        run = _run_scanned if self.scanned else _run_unrolled
        return run(self.layers, fn, x, xs, self.runtime.remat)

    def prefix(self, tokens: Array) -> tuple[Array, Array]:
        """Keys and values (layers, 1, P, kv_heads, head_dim) of a (P,) token prefix
        that every row of a batch shares.

        Computing the instruction head of a prompt once per batch instead of once
        per row is exact (causality: the head never sees the text) and, on
        ETHOS-length texts, removes about a third of the work.
        """
        t = tokens.shape[0]
        positions = jnp.arange(t)[None]
        mask = jnp.tril(jnp.ones((t, t), bool))[None]

        def fn(layer: DecoderLayer, x: Array, xs_i: Any) -> tuple[Array, Any]:
            inv_freq, window = xs_i
            kv = layer.attn.keys_values(layer.pre_attention_norm(x), positions, inv_freq)
            return layer(x, positions, mask, inv_freq, window), kv

        _, kv = self._run_layers(fn, self._embed(tokens[None]), tuple(map(jnp.asarray, layer_tables(self.config))))
        return kv

    def hidden_states(self, tokens: Array, padding_mask: Array | None = None,
                      positions: Array | None = None, prefix: tuple[Array, Array] | None = None,
                      segment_ids: Array | None = None, prefix_mask: Array | None = None,
                      head: Array | None = None) -> Array:
        """Final-normed hidden states (batch, seq, embed).

        `padding_mask` marks real tokens (1) vs padding (0); with right padding
        positions are simply 0..seq-1 (after the prefix, if one is given).
        `segment_ids` (batch, seq) instead packs several examples in a row:
        tokens attend only within their own segment (0 is padding), and
        `positions` then restart at each segment. `prefix` is
        `self.prefix(shared_tokens)`: every segment continues after it;
        `prefix_mask` (P,) hides its padding (a head padded to a shared length).
        `head` (P,) tokens instead of `prefix`: the head's layers run in the same
        scan as the rows' (one loop forward, one backward, where a separate
        `prefix` call would add a second pair), its keys/values feeding each layer.
        """
        b, t = tokens.shape
        p = head.shape[0] if head is not None else (0 if prefix is None else prefix[0].shape[2])
        positions, mask, key_positions = row_masks(b, t, p, padding_mask, positions, segment_ids, prefix_mask)

        inv_freq, windows = map(jnp.asarray, layer_tables(self.config))
        if head is None:
            def fn(layer: DecoderLayer, x: Array, xs_i: Any) -> tuple[Array, Any]:
                inv_freq, window, kv = xs_i
                return layer(x, positions, mask, inv_freq, window, kv, key_positions), None

            x, _ = self._run_layers(fn, self._embed(tokens), (inv_freq, windows, prefix))
            return self.final_norm(x)

        head_pos = jnp.arange(p)[None]
        head_mask = jnp.tril(jnp.ones((p, p), bool))[None]

        def fn_head(layer: DecoderLayer, carry: Any, xs_i: Any) -> tuple[Any, Any]:
            x, hx = carry
            inv_freq, window = xs_i
            kv = layer.attn.keys_values(layer.pre_attention_norm(hx), head_pos, inv_freq)
            hx = layer(hx, head_pos, head_mask, inv_freq, window)
            return (layer(x, positions, mask, inv_freq, window, kv, key_positions), hx), None

        (x, _), _ = self._run_layers(fn_head, (self._embed(tokens), self._embed(head[None])), (inv_freq, windows))
        return self.final_norm(x)

    def project(self, hidden: Array, token_ids: Array | None = None) -> Array:
        """Logits over the tied embedding, or only over `token_ids` rows.

        Passing `token_ids` is how classification avoids the full vocabulary:
        Gemma 3's 262k-row projection costs more than the whole 270M body.
        """
        emb = self.embedder.rows(hidden.dtype, token_ids)
        logits = jnp.einsum("...d,vd->...v", hidden, emb)
        return _softcap(logits, self.config.final_logit_softcap)

    def __call__(self, tokens: Array, padding_mask: Array | None = None) -> Array:
        return self.project(self.hidden_states(tokens, padding_mask))


def flat_state(model: nnx.Module, filter_: Any = nnx.Param) -> dict[str, Array]:
    """The model's variables of `filter_` as a flat `{"a.b.c": array}` dict in the exchange
    format (`layers.{i}.*`, one tensor per layer, whatever the model's own layout)."""
    flat = {".".join(map(str, path)): v[...] for path, v in nnx.to_flat_state(nnx.state(model, filter_))}
    return layout.to_exchange(flat, _stacking(model))


def _stacking(model: nnx.Module) -> layout.Stacking:
    return getattr(model, "stacking", ())


def quantized_weights(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """`{model-layout name: contracted axes}` of every quantized weight (none for a float base);
    its scales are the variable `<name>_scale`."""
    out: dict[str, tuple[int, ...]] = {}
    for path, module in nnx.iter_graph(model):
        name = ".".join(map(str, path))
        if isinstance(module, Einsum) and module.quant != "none":
            out[f"{name}.kernel"] = module.contracted_axes(1 if module.stacked else 0)
        elif isinstance(module, Embedder) and module.quant != "none":
            out[f"{name}.input_embedding"] = Embedder.CONTRACTED
        elif getattr(module, "QUANTIZED", None) and module.quant != "none":  # stacked experts (toolkit.models.moe)
            out.update({f"{name}.{weight}": module.contracted_axes(weight) for weight in module.QUANTIZED})
    return out


def frozen_params(model: Gemma, gather: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                  ) -> dict[str, np.ndarray]:
    """The frozen base in fp32 and the exchange layout, dequantized when stored quantized:
    what a saved in-memory base and an unmerged export hold. `gather` brings sharded
    arrays to the host first (`toolkit.train.mesh.to_host`, a collective on a pod)."""
    flat = {".".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(model, FROZEN_FILTER))}
    if gather is not None:
        flat = gather(flat)
    mode = model.runtime.base_quant
    for name, contracted in quantized_weights(model).items():
        scale = flat.pop(name + quant.SCALE_SUFFIX)
        flat[name] = quant.dequantize(flat[name], scale, contracted, mode, jnp.float32)
    return layout.to_exchange({k: np.asarray(v, np.float32) for k, v in flat.items()}, _stacking(model))


def merged_params(model: Gemma) -> dict[str, np.ndarray]:
    """Base weights with every adapter folded in, fp32, in the exchange layout (for export)."""
    merged = {}
    for path, module in nnx.iter_graph(model):
        if isinstance(module, Einsum):
            merged[".".join(map(str, path)) + ".kernel"] = np.asarray(module.merged_kernel())
    return {**frozen_params(model), **layout.to_exchange(merged, _stacking(model))}


FROZEN_FILTER = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def set_flat(model: nnx.Module, flat: Mapping[str, np.ndarray], filter_: Any, *, source: str) -> None:
    """Set `model`'s `filter_` variables from exchange-format tensors (the inverse of
    `flat_state`); names and shapes must match exactly, errors name `source`."""
    state = nnx.state(model, filter_)
    vars_ = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
    expected = layout.exchange_shapes({k: v.shape for k, v in vars_.items()}, _stacking(model))
    if set(flat) != set(expected):
        raise ValueError(f"{source}: tensors {sorted(set(flat) ^ set(expected))[:6]} do not match the model "
                         "(a different LoRA config or architecture?)")
    for k, shape in expected.items():
        if tuple(flat[k].shape) != shape:
            raise ValueError(f"{source}: {k} has shape {tuple(flat[k].shape)}, expected {shape}")
    for k, value in layout.to_model(flat, _stacking(model)).items():
        vars_[k].set_value(jnp.asarray(value, vars_[k][...].dtype))
