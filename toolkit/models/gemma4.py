"""Gemma 4's text decoder (dense) as a Flax NNX module tree, matching keras-hub 0.32's
`Gemma4Backbone` (text part; no vision or audio tower).

What differs from Gemma 1-3 (`toolkit.models.gemma`, whose pieces this reuses):

* Four norms per block, Q and K norms with a gain, a V norm without one; every
  Gemma 4 norm is `x / rms(x) * scale` with the gain stored as is (Gemma 1-3
  store `scale` of `1 + scale`). Attention is unscaled (`query_pre_attn_scalar`
  is 1.0): the Q/K norms bound the logits.
* Local (sliding-window) and global layers differ in shape: global layers may
  have a wider head (`global_head_dim`), fewer K/V heads whose values come from
  the key projection (`num_global_kv_heads`, K=V: no `v_proj`), and partial
  RoPE (`rope_partial_global`; `gemma.rope_inv_freq`), each type with its own
  RoPE base and scaling.
* K/V sharing: the last `num_kv_shared_layers` layers have no K/V projections
  and attend over the keys/values of the last earlier non-shared layer of
  their type (`ModelConfig.kv_shared_source`), optionally with a double-wide
  MLP (`use_double_wide_mlp`).
* Per-layer inputs (2B/4B, `per_layer_input_dim` P > 0): a second embedding
  table (rows x layers * P) and a projection of the scaled input embedding x
  give layer i a per-token vector, exactly as keras-hub computes it,
  `input_i = (norm((x @ W)_i / sqrt(embed)) + table[token]_i * sqrt(P)) / sqrt(2)`,
  which gates a residual after the MLP: `x += norm(up(gelu(gate(x)) * input_i))`.
* Each layer's output is multiplied by its `layer_scalar` (a frozen scalar
  in keras-hub and HF, loaded from the checkpoint).
* The final logits are soft-capped (30), as in Gemma 2.
* The 26B-A4B (`num_experts` > 0) runs a mixture of experts beside every dense MLP
  (`toolkit.models.moe`): `x += post_ffw(post_dense(mlp(pre_ffw(x))) +
  post_moe(experts(pre_moe(x))))`, routed by the raw residual stream.

Layers differ in shape by type, so a scanned model (`Runtime.scan_layers`, the
default) scans over the repeating block of layer types instead of over layers
(`toolkit.models.layout.blocks`), its body running one layer of each type; remat
applies per layer. The flat exchange names (`toolkit.models.layout`):

    embedder.input_embedding                    (vocab, embed)
    per_layer_embedder.input_embedding          (per_layer_vocab, layers * P)  (vocab, per_layer)  2B/4B
    per_layer_projection.kernel                 (embed, layers * P)                (embed, per_layer)  2B/4B
    per_layer_projection_norm.scale             (P,)                               (per_layer,)        2B/4B
    layers.{i}.pre_attention_norm.scale         (embed,)
    layers.{i}.attn.q_proj.kernel               (heads, embed, head_dim_i)
    layers.{i}.attn.q_norm.scale                (head_dim_i,)
    layers.{i}.attn.k_proj.kernel               (kv_heads_i, embed, head_dim_i)    not on K/V-shared layers
    layers.{i}.attn.k_norm.scale                (head_dim_i,)                      not on K/V-shared layers
    layers.{i}.attn.v_proj.kernel               (kv_heads_i, embed, head_dim_i)    not on shared or K=V layers
    layers.{i}.attn.o_proj.kernel               (heads, head_dim_i, embed)
    layers.{i}.post_attention_norm.scale        (embed,)
    layers.{i}.pre_ffw_norm.scale               (embed,)
    layers.{i}.mlp.{gate,up}_proj.kernel        (embed, mlp_i)                     gate goes through GeLU
    layers.{i}.mlp.down_proj.kernel             (mlp_i, embed)
    layers.{i}.post_ffw_norm.scale              (embed,)
    layers.{i}.{post_ffw_norm_dense,pre_ffw_norm_moe,post_ffw_norm_moe}.scale  (embed,)  26B-A4B
    layers.{i}.experts.*                        see toolkit.models.moe              26B-A4B
    layers.{i}.per_layer_gate.kernel            (embed, P)                         2B/4B
    layers.{i}.per_layer_up_proj.kernel         (P, embed)                         2B/4B
    layers.{i}.post_per_layer_norm.scale        (embed,)                           2B/4B
    layers.{i}.layer_scalar                     ()
    final_norm.scale                            (embed,)

head_dim_i / kv_heads_i / mlp_i are `ModelConfig.layer_head_dim(i)` etc. The one
new logical axis name is `per_layer` (P, and layers * P), split over `fsdp` by the rule
table (`toolkit.train.mesh`): the 2B's per-layer table is 2.3B of its 5.1B weights. There
is no `v` adapter where there is no `v_proj` (keras-hub's `enable_lora` likewise finds no
"value" layer there).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit.models import layout
from toolkit.models.configs import ModelConfig, Runtime
from toolkit.models.gemma import (
    GLOBAL_WINDOW,
    MLP,
    Embedder,
    Gemma,
    RMSNorm,
    _param,
    _remat_layer,
    _run_scanned,
    _stacked,
    _targets,
    apply_rope,
    attend,
    rope_inv_freq,
    row_masks,
    weight_kw,
)
from toolkit.models.lora import Einsum, LoRAConfig
from toolkit.models.moe import MoE

Array = jax.Array
KV = tuple[Array, Array]


def layer_rope(cfg: ModelConfig, i: int) -> np.ndarray:
    """Layer i's RoPE inverse frequencies (head_dim_i / 2,): its type's base and scaling, and
    on global layers keras-hub's partial rotation with the full head's frequencies."""
    if cfg.is_global_layer(i):
        return rope_inv_freq(cfg.layer_head_dim(i), cfg.rope_base_global, cfg.rope_scale_global,
                             cfg.rope_partial_global)
    return rope_inv_freq(cfg.layer_head_dim(i), cfg.rope_base_local, cfg.rope_scale_local)


def layer_window(cfg: ModelConfig, i: int) -> int:
    """Layer i's attention window: `sliding_window` on local layers (when set), else unbounded."""
    return cfg.sliding_window if cfg.sliding_window and not cfg.is_global_layer(i) else GLOBAL_WINDOW


def _norm_kw(cfg: ModelConfig, rt: Runtime, stack: int | None = None) -> dict[str, Any]:
    # Gemma 4's norms hold the gain itself (x / rms(x) * scale), initialised to ones.
    return dict(eps=cfg.norm_eps, param_dtype=jnp.dtype(rt.param_dtype), dtype=jnp.dtype(rt.dtype),
                scale_offset=0.0, stack=stack)


class Gemma4Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rt: Runtime, i: int, *, lora: LoRAConfig | None, rngs: nnx.Rngs,
                 stack: int | None = None):
        self.cfg = cfg
        kw = dict(**weight_kw(rt), rngs=rngs, stack=stack)
        n, d, h, k = cfg.num_heads, cfg.embed_dim, cfg.layer_head_dim(i), cfg.layer_kv_heads(i)
        self.shared = cfg.kv_shared_source(i) is not None
        self.k_eq_v = cfg.layer_k_eq_v(i)
        self.q_proj = Einsum("btd,ndh->btnh", (n, d, h), ("heads", "embed", "head_dim"),
                             lora=_targets(lora, "q"), **kw)
        self.q_norm = RMSNorm(h, "head_dim", **_norm_kw(cfg, rt, stack))
        if not self.shared:  # a shared layer borrows its source layer's keys and values
            self.k_proj = Einsum("btd,kdh->btkh", (k, d, h), ("kv_heads", "embed", "head_dim"),
                                 lora=_targets(lora, "k"), **kw)
            self.k_norm = RMSNorm(h, "head_dim", **_norm_kw(cfg, rt, stack))
            if not self.k_eq_v:
                self.v_proj = Einsum("btd,kdh->btkh", (k, d, h), ("kv_heads", "embed", "head_dim"),
                                     lora=_targets(lora, "v"), **kw)
            self.v_norm = RMSNorm(h, "head_dim", **_norm_kw(cfg, rt, stack), with_scale=False)
        self.o_proj = Einsum("btnh,nhd->btd", (n, h, d), ("heads", "head_dim", "embed"),
                             lora=_targets(lora, "o"), **kw)

    def keys_values(self, x: Array, positions: Array, inv_freq: Array) -> KV:
        """Post-norm, post-RoPE keys and normed values of `x` (not on a K/V-shared layer)."""
        raw = self.k_proj(x)
        k = apply_rope(self.k_norm(raw), positions, inv_freq)
        # K=V: the values are the keys' projection before its norm and RoPE, with the V norm.
        v = self.v_norm(raw if self.k_eq_v else self.v_proj(x))
        return k, v

    def __call__(self, x: Array, positions: Array, mask: Array, inv_freq: Array, window: int, kv: KV,
                 prefix: KV | None = None, key_positions: Array | None = None) -> Array:
        """Attention of `x`'s queries over `kv` (this layer's, or its source's on a shared layer),
        after `prefix` keys/values (1, P, ...) when given; `mask` and `key_positions` as in
        `toolkit.models.gemma.Attention`."""
        q = apply_rope(self.q_norm(self.q_proj(x)), positions, inv_freq)
        # query_pre_attn_scalar is 1.0 for Gemma 4: unscaled attention
        return self.o_proj(attend(self.cfg, q, *kv, positions, mask, window, prefix, key_positions))


class Gemma4Layer(nnx.Module):
    """One Gemma 4 decoder block (layer `i` of `cfg`: its shapes depend on its type), or with
    `stack=n` the weights of n layers of layer i's signature stacked for `lax.scan`."""

    def __init__(self, cfg: ModelConfig, rt: Runtime, i: int, *, lora: LoRAConfig | None, rngs: nnx.Rngs,
                 stack: int | None = None):
        d = cfg.embed_dim
        nk = _norm_kw(cfg, rt, stack)
        self.pre_attention_norm = RMSNorm(d, "embed", **nk)
        self.attn = Gemma4Attention(cfg, rt, i, lora=lora, rngs=rngs, stack=stack)
        self.post_attention_norm = RMSNorm(d, "embed", **nk)
        self.pre_ffw_norm = RMSNorm(d, "embed", **nk)
        self.mlp = MLP(cfg, rt, lora=lora, rngs=rngs, mlp_dim=cfg.layer_mlp_dim(i), stack=stack)
        self.has_experts = cfg.num_experts > 0
        if self.has_experts:  # 26B-A4B: experts beside the dense MLP, each path with its own norms
            self.post_ffw_norm_dense = RMSNorm(d, "embed", **nk)
            self.pre_ffw_norm_moe = RMSNorm(d, "embed", **nk)
            self.experts = MoE(cfg, rt, rngs=rngs, stack=stack)
            self.post_ffw_norm_moe = RMSNorm(d, "embed", **nk)
        self.post_ffw_norm = RMSNorm(d, "embed", **nk)
        self.per_layer_dim = cfg.per_layer_input_dim
        if self.per_layer_dim:
            kw = dict(**weight_kw(rt), rngs=rngs, stack=stack)
            p = self.per_layer_dim
            self.per_layer_gate = Einsum("btd,dp->btp", (d, p), ("embed", "per_layer"), **kw)
            self.per_layer_up_proj = Einsum("btp,pd->btd", (p, d), ("per_layer", "embed"), **kw)
            self.post_per_layer_norm = RMSNorm(d, "embed", **nk)
        shape, axes = _stacked(stack, (), ())
        self.layer_scalar = _param(jnp.ones(shape, jnp.dtype(rt.param_dtype)), axes)

    def __call__(self, x: Array, positions: Array, mask: Array, inv_freq: Array, window: int,
                 per_layer_input: Array | None = None, shared_kv: KV | None = None,
                 prefix: KV | None = None, key_positions: Array | None = None) -> tuple[Array, KV]:
        """The block's output and the keys/values its attention used (its own, or `shared_kv`
        on a K/V-shared layer), which later shared layers reuse."""
        h = self.pre_attention_norm(x)
        kv = shared_kv if self.attn.shared else self.attn.keys_values(h, positions, inv_freq)
        if kv is None:
            raise ValueError("a K/V-shared Gemma 4 layer needs its source layer's keys and values")
        a = self.attn(h, positions, mask, inv_freq, window, kv, prefix, key_positions)
        x = x + self.post_attention_norm(a)
        f = self.mlp(self.pre_ffw_norm(x))
        if self.has_experts:
            f = self.post_ffw_norm_dense(f) + self.post_ffw_norm_moe(self.experts(x, self.pre_ffw_norm_moe(x)))
        x = x + self.post_ffw_norm(f)
        if self.per_layer_dim:
            g = jax.nn.gelu(self.per_layer_gate(x), approximate=True) * per_layer_input.astype(x.dtype)
            x = x + self.post_per_layer_norm(self.per_layer_up_proj(g))
        return x * self.layer_scalar[...].astype(x.dtype), kv


class Gemma4(Gemma):
    """A Gemma 4 text decoder with `Gemma`'s interface (`hidden_states`, `prefix`, `project`,
    `__call__`; embedding and tied projection are inherited). `lora` adds adapters to the
    chosen projections that exist in each layer.

    Scanned (`Runtime.scan_layers`, the default), the repeating block of layer types runs under
    `lax.scan` (`toolkit.models.layout.blocks`: the layers with their own K/V, then the
    K/V-shared tail): `blocks[g][j]` holds position j of every block of group g, stacked,
    and the few layers in no whole block are `layers[str(i)]`. Unscanned, every layer is
    `layers[str(i)]`. Either way the exchange names are `layers.{i}.*`. `prefix` returns
    per-layer tuples `(keys, values)`, since layers' K/V shapes differ by type.
    """

    def __init__(self, config: ModelConfig, *, runtime: Runtime | None = None, lora: LoRAConfig | None = None,
                 rngs: nnx.Rngs):
        if config.family != "gemma4":
            raise ValueError(f"model {config.name!r}: Gemma4 needs family 'gemma4', got {config.family!r}")
        rt = self._runtime(config, runtime)
        self.lora = lora
        self.dtype = jnp.dtype(rt.dtype)
        self.embedder = Embedder(config, rt, rngs=rngs)
        if config.per_layer_input_dim:
            n, p = config.num_layers, config.per_layer_input_dim
            self.per_layer_embedder = Embedder(config, rt, rngs=rngs,
                                               rows=config.per_layer_vocab_size or config.vocab_size,
                                               dim=n * p, axes=("vocab", "per_layer"))
            self.per_layer_projection = Einsum("btd,dp->btp", (config.embed_dim, n * p), ("embed", "per_layer"),
                                               **weight_kw(rt), rngs=rngs)
            self.per_layer_projection_norm = RMSNorm(p, "per_layer", **_norm_kw(config, rt))
        blocks = self._blocks
        self.blocks = nnx.List([nnx.List([Gemma4Layer(config, rt, blk.start + j, lora=lora, rngs=rngs, stack=blk.blocks)
                                          for j in range(blk.period)]) for blk in blocks])
        in_blocks = {i for blk in blocks for i in range(blk.start, blk.stop)}
        self.layers = nnx.Dict({str(i): Gemma4Layer(config, rt, i, lora=lora, rngs=rngs)
                                for i in range(config.num_layers) if i not in in_blocks})
        self.final_norm = RMSNorm(config.embed_dim, "embed", **_norm_kw(config, rt))

    @property
    def _blocks(self) -> tuple[layout.Block, ...]:
        return layout.blocks(self.config) if self.scanned else ()

    def _per_layer_inputs(self, tokens: Array, x: Array) -> Array | None:
        """(batch, seq, layers, P) per-layer inputs of `tokens`, whose scaled embedding is `x`:
        keras-hub's `(norm(x @ W / sqrt(embed)) + table[tokens] * sqrt(P)) / sqrt(2)`, the norm
        per layer's slice of P."""
        cfg = self.config
        if not cfg.per_layer_input_dim:
            return None
        n, p = cfg.num_layers, cfg.per_layer_input_dim
        emb = self.per_layer_embedder.rows(self.dtype, tokens) * jnp.asarray(p**0.5, self.dtype)
        proj = self.per_layer_projection(x) * jnp.asarray(cfg.embed_dim**-0.5, self.dtype)
        proj = self.per_layer_projection_norm(proj.reshape(*proj.shape[:-1], n, p))
        return (proj + emb.reshape(*emb.shape[:-1], n, p)) * jnp.asarray(2.0**-0.5, self.dtype)

    def _run(self, x: Array, positions: Array, mask: Array, tokens: Array, *,
             prefix: tuple[tuple[Array, ...], tuple[Array, ...]] | None = None, key_positions: Array | None = None,
             head: Array | None = None, all_kv: bool = False) -> tuple[Array, dict[int, KV]]:
        """All layers on `x` (the embedding of `tokens`), in layer order: each block group as
        one scan, each other layer on its own. Returns the last hidden states and the
        keys/values of every layer a later K/V-shared layer reads (of every layer with
        `all_kv`; a shared layer's are its source's).

        With `head` (P,) tokens, the head runs through each layer just before the rows (causal
        on its own) and its keys/values are the rows' prefix in that layer, as `Gemma`'s
        `hidden_states(head=...)`.
        """
        cfg = self.config
        pli = self._per_layer_inputs(tokens, x)
        carry: Any = x
        if head is not None:
            p = head.shape[0]
            hx = self._embed(head[None])
            hpli = self._per_layer_inputs(head[None], hx)
            head_pos = jnp.arange(p)[None]
            head_mask = jnp.tril(jnp.ones((p, p), bool))[None]
            carry = (x, hx)
        read_later = {cfg.kv_shared_source(i) for i in range(cfg.num_layers)} - {None}
        kvs: dict[int, KV] = {}  # (rows' K/V, head's K/V or None) by layer
        remat = self.runtime.remat

        def step(i: int) -> Any:
            """Layer i's step; it serves every layer of i's signature (a block position)."""
            inv, window = jnp.asarray(layer_rope(cfg, i)), layer_window(cfg, i)

            def fn(layer: Gemma4Layer, carry: Any, xs: Any) -> tuple[Any, Any]:
                (pli_i, extra), (shared, hshared) = xs
                if head is None:  # extra: this layer's prefix K/V
                    x, kv = layer(carry, positions, mask, inv, window, pli_i, shared, extra, key_positions)
                    return x, (kv, None)
                x, hx = carry  # extra: the head's per-layer input
                hx, hkv = layer(hx, head_pos, head_mask, inv, window, extra, hshared)
                x, kv = layer(x, positions, mask, inv, window, pli_i, shared, hkv, key_positions)
                return (x, hx), (kv, hkv)

            return _remat_layer(fn, remat)

        def own_inputs(layers: int | tuple[int, ...]) -> tuple[Any, Any]:
            """One layer's inputs, or several layers' stacked on a leading axis (a scan's xs):
            its per-layer input, and its prefix K/V (or with a head, the head's per-layer input)."""
            def per_layer(a: Array | None) -> Array | None:
                if a is None or isinstance(layers, int):
                    return None if a is None else a[:, :, layers]
                return jnp.moveaxis(a[:, :, np.asarray(layers)], 2, 0)

            if head is not None:
                return per_layer(pli), per_layer(hpli)
            if prefix is None:
                return per_layer(pli), None
            if isinstance(layers, int):
                return per_layer(pli), (prefix[0][layers], prefix[1][layers])
            return per_layer(pli), tuple(jnp.stack([half[k] for k in layers]) for half in prefix)

        def source_kv(i: int) -> tuple[Any, Any]:
            src = cfg.kv_shared_source(i)
            return (None, None) if src is None else kvs[src]

        def keep(i: int, out: Any) -> None:
            src = cfg.kv_shared_source(i)
            kvs[i] = kvs[src] if src is not None else out

        blocks = {blk.start: (g, blk) for g, blk in enumerate(self._blocks)}
        i = 0
        while i < cfg.num_layers:
            if i not in blocks:
                carry, out = step(i)(self.layers[str(i)], carry, (own_inputs(i), source_kv(i)))
                keep(i, out)
                i += 1
                continue
            g, blk = blocks[i]
            steps = [step(blk.start + j) for j in range(blk.period)]
            shared = [source_kv(blk.start + j) for j in range(blk.period)]  # fixed per position: not scanned
            # Only the keys/values a later layer reads leave the scan (every layer's for `prefix`).
            wanted = [cfg.kv_shared_source(blk.start + j) is None
                      and (all_kv or bool(read_later & set(blk.layers(j)))) for j in range(blk.period)]

            def body(stacked: nnx.List, carry: Any, xs: Any, steps=steps, shared=shared, wanted=wanted) -> Any:
                ys = []
                for j, layer in enumerate(stacked):
                    carry, out = steps[j](layer, carry, (xs[j], shared[j]))
                    ys.append(out if wanted[j] else None)
                return carry, tuple(ys)

            xs = tuple(own_inputs(blk.layers(j)) for j in range(blk.period))
            carry, ys = _run_scanned(self.blocks[g], body, carry, xs, "none")  # remat: per layer, in `step`
            for j in range(blk.period):
                for b, k in enumerate(blk.layers(j)):
                    keep(k, None if ys[j] is None else jax.tree.map(lambda a, b=b: a[b], ys[j]))
            i = blk.stop
        return (carry if head is None else carry[0]), kvs

    def prefix(self, tokens: Array) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        """Keys and values of a (P,) token prefix that every row of a batch shares: per-layer
        tuples `(keys, values)` of (1, P, kv_heads_i, head_dim_i) arrays (a K/V-shared layer's
        are its source layer's). Exact, as `Gemma.prefix`."""
        t = tokens.shape[0]
        positions = jnp.arange(t)[None]
        mask = jnp.tril(jnp.ones((t, t), bool))[None]
        _, kvs = self._run(self._embed(tokens[None]), positions, mask, tokens[None], all_kv=True)
        n = self.config.num_layers
        return tuple(kvs[i][0][0] for i in range(n)), tuple(kvs[i][0][1] for i in range(n))

    def hidden_states(self, tokens: Array, padding_mask: Array | None = None,
                      positions: Array | None = None, prefix: tuple[tuple[Array, ...], tuple[Array, ...]] | None = None,
                      segment_ids: Array | None = None, prefix_mask: Array | None = None,
                      head: Array | None = None) -> Array:
        """Final-normed hidden states (batch, seq, embed); arguments as `Gemma.hidden_states`
        (`prefix` is `self.prefix(shared_tokens)`). A K/V-shared layer attends over its source
        layer's keys/values of the rows and of the shared prefix or head alike."""
        b, t = tokens.shape
        p = head.shape[0] if head is not None else (0 if prefix is None else prefix[0][0].shape[1])
        positions, mask, key_positions = row_masks(b, t, p, padding_mask, positions, segment_ids, prefix_mask)
        x, _ = self._run(self._embed(tokens), positions, mask, tokens, prefix=prefix, key_positions=key_positions,
                         head=head)
        return self.final_norm(x)
