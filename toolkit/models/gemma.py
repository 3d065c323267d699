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
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit.models.configs import ModelConfig
from toolkit.models.lora import Einsum, LoRAConfig

Array = jax.Array


def _param(value: Array, axes: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(value, sharding_names=axes, eager_sharding=False)


class RMSNorm(nnx.Module):
    """Gemma's RMSNorm, `x / rms(x) * (1 + scale)`, always reduced in fp32."""

    def __init__(self, dim: int, axis_name: str, *, eps: float, param_dtype: Any, dtype: Any):
        self.eps = eps
        self.dtype = dtype
        self.scale = _param(jnp.zeros((dim,), param_dtype), (axis_name,))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps) * (1.0 + self.scale[...].astype(jnp.float32))
        return y.astype(self.dtype)


def apply_rope(x: Array, positions: Array, base: float, scale: float) -> Array:
    """Rotate-half RoPE on (batch, seq, heads, head_dim) at integer `positions`.

    `scale` is linear position interpolation (Gemma 3 4B's global layers use 8).
    """
    half = x.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1]) / scale
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (b, t, half)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def _softcap(x: Array, cap: float | None) -> Array:
    return x if cap is None else jnp.tanh(x / cap) * cap


def _targets(lora: LoRAConfig | None, name: str) -> LoRAConfig | None:
    return lora if lora is not None and name in lora.targets else None


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, lora: LoRAConfig | None, rngs: nnx.Rngs):
        self.cfg = cfg
        self.is_global = cfg.is_global_layer(layer)
        kw = dict(param_dtype=jnp.dtype(cfg.param_dtype), dtype=jnp.dtype(cfg.dtype), rngs=rngs)
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
            norm_kw = dict(eps=cfg.norm_eps, param_dtype=kw["param_dtype"], dtype=kw["dtype"])
            self.q_norm = RMSNorm(h, "head_dim", **norm_kw)
            self.k_norm = RMSNorm(h, "head_dim", **norm_kw)

    def _rope(self) -> tuple[float, float]:
        cfg = self.cfg
        if self.is_global:
            return cfg.rope_base_global, cfg.rope_scale_global
        return cfg.rope_base_local, cfg.rope_scale_local

    def keys_values(self, x: Array, positions: Array) -> tuple[Array, Array]:
        """Post-norm, post-RoPE keys and the values of `x`: what a shared prefix contributes."""
        k, v = self.k_proj(x), self.v_proj(x)
        if self.cfg.use_qk_norm:
            k = self.k_norm(k)
        return apply_rope(k, positions, *self._rope()), v

    def __call__(self, x: Array, positions: Array, mask: Array,
                 prefix: tuple[Array, Array] | None = None, key_positions: Array | None = None) -> Array:
        """`mask` is (batch, q, k) bool: padding and causality, before windowing.

        `prefix` holds keys/values (1, P, kv_heads, head_dim) of tokens every row
        shares (a prompt's instruction head), prepended to this batch's keys;
        `key_positions` (batch, P + seq) then gives every key's position.
        """
        cfg = self.cfg
        q = self.q_proj(x)
        if cfg.use_qk_norm:
            q = self.q_norm(q)
        k, v = self.keys_values(x, positions)
        if prefix is not None:
            b = x.shape[0]
            k = jnp.concatenate([jnp.broadcast_to(prefix[0], (b, *prefix[0].shape[1:])), k], axis=1)
            v = jnp.concatenate([jnp.broadcast_to(prefix[1], (b, *prefix[1].shape[1:])), v], axis=1)
        if not self.is_global:
            kpos = positions if key_positions is None else key_positions
            mask = mask & (jnp.abs(positions[:, :, None] - kpos[:, None, :]) < cfg.sliding_window)
        q = apply_rope(q, positions, *self._rope())
        q = q * jnp.asarray(cfg.query_pre_attn_scalar**-0.5, q.dtype)
        b, t, _, hd = q.shape
        q = q.reshape(b, t, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, hd)
        logits = jnp.einsum("btkgh,bskh->bkgts", q, k)
        logits = _softcap(logits, cfg.attn_logit_softcap).astype(jnp.float32)
        logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        # A query that may attend to nothing (padding before any token) gets zeros,
        # not a uniform average over masked keys.
        probs = jnp.where(mask.any(-1)[:, None, None, :, None], probs, 0.0).astype(v.dtype)
        out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, cfg.num_heads, hd)
        return self.o_proj(out)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, lora: LoRAConfig | None, rngs: nnx.Rngs):
        kw = dict(param_dtype=jnp.dtype(cfg.param_dtype), dtype=jnp.dtype(cfg.dtype), rngs=rngs)
        d, f = cfg.embed_dim, cfg.mlp_dim
        self.gate_proj = Einsum("btd,df->btf", (d, f), ("embed", "mlp"), lora=_targets(lora, "gate"), **kw)
        self.up_proj = Einsum("btd,df->btf", (d, f), ("embed", "mlp"), lora=_targets(lora, "up"), **kw)
        self.down_proj = Einsum("btf,fd->btd", (f, d), ("mlp", "embed"), lora=_targets(lora, "down"), **kw)

    def __call__(self, x: Array) -> Array:
        return self.down_proj(jax.nn.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, lora: LoRAConfig | None, rngs: nnx.Rngs):
        norm_kw = dict(eps=cfg.norm_eps, param_dtype=jnp.dtype(cfg.param_dtype), dtype=jnp.dtype(cfg.dtype))
        self.pre_attention_norm = RMSNorm(cfg.embed_dim, "embed", **norm_kw)
        self.attn = Attention(cfg, layer, lora=lora, rngs=rngs)
        if cfg.use_post_attn_norm:
            self.post_attention_norm = RMSNorm(cfg.embed_dim, "embed", **norm_kw)
        self.pre_ffw_norm = RMSNorm(cfg.embed_dim, "embed", **norm_kw)
        self.mlp = MLP(cfg, lora=lora, rngs=rngs)
        if cfg.use_post_ffw_norm:
            self.post_ffw_norm = RMSNorm(cfg.embed_dim, "embed", **norm_kw)
        self.use_post_attn_norm = cfg.use_post_attn_norm
        self.use_post_ffw_norm = cfg.use_post_ffw_norm

    def __call__(self, x: Array, positions: Array, mask: Array, prefix: tuple[Array, Array] | None = None,
                 key_positions: Array | None = None) -> Array:
        a = self.attn(self.pre_attention_norm(x), positions, mask, prefix, key_positions)
        if self.use_post_attn_norm:
            a = self.post_attention_norm(a)
        x = x + a
        f = self.mlp(self.pre_ffw_norm(x))
        if self.use_post_ffw_norm:
            f = self.post_ffw_norm(f)
        return x + f


def _call_layer(layer: DecoderLayer, *args: Any) -> Array:
    return layer(*args)


_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _remat(policy: Any):
    def run(layer: DecoderLayer, *args: Any) -> Array:
        graphdef, state = nnx.split(layer)

        def pure(state, *args):
            inner = nnx.merge(graphdef, state)
            return inner(*args), nnx.state(inner, nnx.RngState)

        out, rng = jax.checkpoint(pure, policy=policy)(state, *args)
        # Dropout streams advance exactly as they would without remat.
        for (_, var), (_, new) in zip(nnx.to_flat_state(nnx.state(layer, nnx.RngState)), nnx.to_flat_state(rng)):
            var.set_value(new[...] if isinstance(new, nnx.Variable) else new)
        return out

    return run


def _layer_runner(remat: str):
    """How a layer is called: directly, or under `jax.checkpoint` so the backward pass
    recomputes its activations instead of keeping them (memory for compute)."""
    if remat == "none":
        return _call_layer
    if remat not in _REMAT_POLICIES:
        raise ValueError(f"remat must be none, dots or full, got {remat!r}")
    return _remat(_REMAT_POLICIES[remat])


class Embedder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(stddev=cfg.embed_dim**-0.5)
        self.input_embedding = _param(
            init(rngs.params(), (cfg.vocab_size, cfg.embed_dim), jnp.dtype(cfg.param_dtype)), ("vocab", "embed")
        )


class Gemma(nnx.Module):
    """A Gemma decoder; `lora` adds adapters (nnx.LoRAParam) to the chosen projections."""

    def __init__(self, config: ModelConfig, *, lora: LoRAConfig | None = None, rngs: nnx.Rngs):
        self.config = config
        self.lora = lora
        self.dtype = jnp.dtype(config.dtype)
        self.embedder = Embedder(config, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(config, i, lora=lora, rngs=rngs) for i in range(config.num_layers)])
        self.final_norm = RMSNorm(config.embed_dim, "embed", eps=config.norm_eps,
                                  param_dtype=jnp.dtype(config.param_dtype), dtype=self.dtype)

    def _embed(self, tokens: Array) -> Array:
        x = jnp.take(self.embedder.input_embedding[...], tokens, axis=0).astype(self.dtype)
        return x * jnp.sqrt(jnp.float32(self.config.embed_dim)).astype(self.dtype)

    def prefix(self, tokens: Array) -> list[tuple[Array, Array]]:
        """Per-layer keys/values of a (P,) token prefix that every row of a batch shares.

        Computing the instruction head of a prompt once per batch instead of once
        per row is exact (causality: the head never sees the text) and, on
        ETHOS-length texts, removes about a third of the work.
        """
        t = tokens.shape[0]
        positions = jnp.arange(t)[None]
        mask = jnp.tril(jnp.ones((t, t), bool))[None]
        x = self._embed(tokens[None])
        out = []
        for layer in self.layers:
            out.append(layer.attn.keys_values(layer.pre_attention_norm(x), positions))
            x = layer(x, positions, mask)
        return out

    def hidden_states(self, tokens: Array, padding_mask: Array | None = None,
                      positions: Array | None = None, prefix: list[tuple[Array, Array]] | None = None) -> Array:
        """Final-normed hidden states (batch, seq, embed).

        `padding_mask` marks real tokens (1) vs padding (0); with right padding
        positions are simply 0..seq-1 (after the prefix, if one is given).
        `prefix` is `self.prefix(shared_tokens)`: rows continue after it.
        """
        b, t = tokens.shape
        p = 0 if prefix is None else prefix[0][0].shape[1]
        if padding_mask is None:
            padding_mask = jnp.ones((b, t), bool)
        if positions is None:
            positions = jnp.broadcast_to(p + jnp.arange(t), (b, t))
        mask = jnp.tril(jnp.ones((t, t), bool))[None] & padding_mask.astype(bool)[:, None, :]
        key_positions = None
        if prefix is not None:
            mask = jnp.concatenate([jnp.ones((b, t, p), bool), mask], axis=-1)
            key_positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (b, p)), positions], axis=1)
        x = self._embed(tokens)
        run = _layer_runner(self.config.remat)
        for i, layer in enumerate(self.layers):
            x = run(layer, x, positions, mask, None if prefix is None else prefix[i], key_positions)
        return self.final_norm(x)

    def project(self, hidden: Array, token_ids: Array | None = None) -> Array:
        """Logits over the tied embedding, or only over `token_ids` rows.

        Passing `token_ids` is how classification avoids the full vocabulary:
        Gemma 3's 262k-row projection costs more than the whole 270M body.
        """
        emb = self.embedder.input_embedding[...]
        if token_ids is not None:
            emb = jnp.take(emb, token_ids, axis=0)
        logits = jnp.einsum("...d,vd->...v", hidden, emb.astype(hidden.dtype))
        return _softcap(logits, self.config.final_logit_softcap)

    def __call__(self, tokens: Array, padding_mask: Array | None = None) -> Array:
        return self.project(self.hidden_states(tokens, padding_mask))


def flat_state(model: nnx.Module, filter_: Any = nnx.Param) -> dict[str, Array]:
    """The model's variables of `filter_` as a flat `{"a.b.c": array}` dict."""
    return {".".join(map(str, path)): v[...] for path, v in nnx.to_flat_state(nnx.state(model, filter_))}


def merged_params(model: Gemma) -> dict[str, np.ndarray]:
    """Base weights with every adapter folded in, fp32, in the flat layout (for export)."""
    out = {k: np.asarray(v, np.float32) for k, v in flat_state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))).items()}
    for path, module in nnx.iter_graph(model):
        if isinstance(module, Einsum):
            out[".".join(map(str, path)) + ".kernel"] = np.asarray(module.merged_kernel())
    return out


def from_params(
    config: ModelConfig,
    params: Mapping[str, np.ndarray],
    *,
    lora: LoRAConfig | None = None,
    seed: int = 0,
    source: str = "params",
) -> Gemma:
    """Build a model from a flat weight dict without ever random-initialising the base.

    The base is created abstractly (no memory), then filled from `params`; only
    the LoRA adapters are initialised, under jit so the base init is dead code.
    `params` may also carry `...lora_a` / `...lora_b` entries, which then
    replace the fresh adapters. Shape or key mismatches raise naming `source`
    and the tensor.
    """
    from toolkit.weights.errors import WeightImportError

    def build() -> Gemma:
        return Gemma(config, lora=lora, rngs=nnx.Rngs(seed))

    graphdef, base_state, other_state = nnx.split(
        nnx.eval_shape(build), nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)), ...)
    # Adapters and RNG streams are small: initialise them for real, under jit so
    # that XLA drops the (unused) random init of the base.
    other_state = jax.jit(lambda: nnx.split(build(), nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)), ...)[2])()
    lora_state = nnx.state(nnx.merge(graphdef, base_state, other_state), nnx.LoRAParam)
    expected = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(base_state)}
    lora_expected = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(lora_state)}
    missing = sorted(set(expected) - set(params))
    if missing:
        raise WeightImportError(f"{source}: missing tensors for {config.name}: {', '.join(missing[:8])}"
                                + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    unknown = sorted(set(params) - set(expected) - set(lora_expected))
    if unknown:
        raise WeightImportError(f"{source}: tensors not in a {config.name} model"
                                f"{' with this LoRA config' if any('lora' in u for u in unknown) else ''}: "
                                f"{', '.join(unknown[:8])}")
    for name, value in params.items():
        var = expected.get(name) or lora_expected[name]
        if tuple(value.shape) != tuple(var.shape):
            raise WeightImportError(f"{source}: tensor {name} has shape {tuple(value.shape)} but "
                                    f"{config.name} expects {tuple(var.shape)}")
        var.set_value(jnp.asarray(value, dtype=var.dtype))
    return nnx.merge(graphdef, base_state, other_state)
