"""The train step and the scoring step: the only two compiled programs.

Both are pure functions of (LoRA state, frozen params, batch). The model is
split once into `graphdef` (structure), `lora` (the only trainable state),
`frozen` (the base, never differentiated) and `rest` (RNG streams); gradients
are taken with respect to `lora` alone, so frozen weights get no gradient
buffers at all and the optimizer state exists only for adapters. A sharded
trainer wraps these same functions in a mesh; there is no second train step.

Classification reads the hidden state at the last prompt token and projects
it onto the class tokens' embedding rows only: Gemma 3's 262k-row vocabulary
projection would cost more than the whole 270M body.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from toolkit.config import LOSSES
from toolkit.models.gemma import FROZEN_FILTER as FROZEN, Gemma

# The prompt's shared instruction head: {"tokens": (P,) padded, "length": () real length}.
Head = dict[str, jax.Array]


class ModelParts(NamedTuple):
    train_graph: Any
    eval_graph: Any
    lora: nnx.State
    frozen: nnx.State
    rest: nnx.State


def trainable_filter(trainable: str = "lora") -> Any:
    """Which variables train: the adapters, or (`full`) every weight of the model."""
    return nnx.Param if trainable == "full" else nnx.LoRAParam


def split_model(model: Gemma, trainable: str = "lora") -> ModelParts:
    """Split once; `train_graph` has dropout on, `eval_graph` off. `lora` holds what trains
    (the adapters; every weight for `trainable="full"`, which leaves `frozen` empty): the
    one train step updates whatever that is."""
    model.eval()
    eval_graph = nnx.graphdef(model)
    model.train()
    frozen_filter = nnx.Nothing if trainable == "full" else FROZEN
    train_graph, lora, frozen, rest = nnx.split(model, trainable_filter(trainable), frozen_filter, ...)
    model.eval()
    return ModelParts(train_graph, eval_graph, lora, frozen, rest)


def as_segments(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Any batch in the packed layout: one segment per row for an unpacked
    (`tokens`, `lengths`, `labels`, `weights`) batch, unchanged if already packed.

    Packed: `tokens`, `segment_ids` (0 = padding), `positions` (restarting at
    each segment) of shape (rows, T); `last` (each segment's last token),
    `labels` and `weights` (0 for empty slots) of shape (rows, S).
    """
    if "segment_ids" in batch:
        return batch
    tokens, lengths = batch["tokens"], batch["lengths"]
    t = tokens.shape[1]
    seg = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": jnp.broadcast_to(jnp.arange(t), tokens.shape),
            "last": (lengths - 1)[:, None], "labels": batch["labels"][:, None], "weights": batch["weights"][:, None]}


def segment_hidden(model: Gemma, batch: dict[str, jax.Array], head: Head | None = None) -> jax.Array:
    """Hidden state at each segment's last token, (rows, S, embed).

    With `head` (the prompt's shared instruction tokens, padded, and their
    real length), rows hold only each example's own part and the head is run
    once for the whole batch; every segment's positions continue after it.
    """
    b = as_segments(batch)
    positions, head_tokens, prefix_mask = b["positions"], None, None
    if head is not None:
        head_tokens = head["tokens"]
        prefix_mask = jnp.arange(head_tokens.shape[0]) < head["length"]
        positions = positions + head["length"]
    h = model.hidden_states(b["tokens"], positions=positions, segment_ids=b["segment_ids"],
                            prefix_mask=prefix_mask, head=head_tokens)
    return jnp.take_along_axis(h, b["last"][:, :, None], axis=1)


def class_logits(model: Gemma, batch: dict[str, jax.Array], class_ids: jax.Array,
                 head: Head | None = None) -> jax.Array:
    """(rows, S, classes) logits of the class tokens at each segment's end."""
    return model.project(segment_hidden(model, batch, head), class_ids).astype(jnp.float32)


def row_losses(
    model: Gemma, batch: dict[str, jax.Array], class_ids: jax.Array, loss: str = "class",
    head: Head | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-segment cross-entropy (rows, S) and the (rows, S, classes) logits.

    "class": softmax over the class tokens only (what scoring uses).
    "lm": the codelab's objective, softmax over the full vocabulary at the
    label position; the class logits are still returned for metrics.
    """
    labels = as_segments(batch)["labels"]
    last = segment_hidden(model, batch, head)
    if loss == "class":
        logits = model.project(last, class_ids).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels), logits
    if loss == "lm":
        vocab = model.project(last).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(vocab, class_ids[labels]), vocab[..., class_ids]
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def make_head(tokens: Sequence[int] | None, multiple: int = 32) -> Head | None:
    """The shared head as a compiled-step argument: tokens padded to a multiple of
    `multiple` plus the real length, so one program serves every prompt of
    similar length (and every label set) instead of one per prompt."""
    if tokens is None:
        return None
    n = len(tokens)
    padded = np.zeros(max(multiple, -(-n // multiple) * multiple), np.int32)
    padded[:n] = tokens
    return {"tokens": jnp.asarray(padded), "length": jnp.int32(n)}


class StepShardings(NamedTuple):
    """Where each argument of the compiled steps lives on the mesh."""

    lora: Any
    opt_state: Any
    frozen: Any
    rest: Any
    batch: Any
    replicated: Any


def _traced_in_mesh(fn: Callable, shardings: StepShardings) -> Callable:
    """`fn`, traced with the steps' mesh as the abstract mesh: what a layer that maps its own
    collectives (the experts' `shard_map`, `toolkit.models.moe`) reads the mesh from,
    so the model never has the mesh passed in."""
    mesh = shardings.replicated.mesh

    @functools.wraps(fn)
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return traced


def _accumulate(batch: dict[str, jax.Array], accum: int) -> dict[str, jax.Array]:
    """(B, ...) -> (accum, B/accum, ...) with micro-batch j holding rows j, j+accum, ...

    Rows stay on the device that holds them (the batch axis is split over the
    mesh in contiguous blocks), so splitting into micro-batches moves no data.
    """
    return jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 1, 0), batch)


def make_train_step(
    graphdef: Any, tx: optax.GradientTransformation, loss: str = "class",
    jit: bool = True, accum_steps: int = 1, shardings: StepShardings | None = None,
) -> Callable:
    """`step(lora, opt_state, frozen, rest, batch, class_ids, head) -> (lora, opt_state, rest, metrics)`.

    `class_ids` and `head` (see `make_head`; may be None) are arguments, not
    constants baked into the program, so one compiled step serves every prompt,
    label set and multi-label question of the same shapes. `batch` is packed
    (see `as_segments`) or unpacked. With `accum_steps > 1` the batch's rows are
    cut into that many micro-batches whose gradients are summed in a
    `lax.scan` before one optimizer update; the loss is normalised by the total
    weight of the whole batch, so the update equals the one a single large
    batch would make. With `shardings`, the step is compiled for the mesh they
    name (same function, one more argument to `jax.jit`): that is the whole
    difference between 1 device and a pod.
    """

    def grads_of(lora, frozen, rest, batch, class_ids, head):
        def objective(lora, rest):
            # Fresh variables for the dropout RNG streams: NNX lets a variable change
            # only at the trace level that created it, and dropout advances its
            # stream inside the gradient trace.
            rest = jax.tree.map(lambda x: x, rest)
            model = nnx.merge(graphdef, lora, frozen, rest)
            ce, logits = row_losses(model, batch, class_ids, loss, head)
            w = as_segments(batch)["weights"].astype(jnp.float32)
            return jnp.sum(ce * w), (logits, nnx.state(model, nnx.Not(nnx.Param)))

        (total, (logits, rest)), grads = jax.value_and_grad(objective, has_aux=True)(lora, rest)
        return total, logits, rest, grads

    def step(lora, opt_state, frozen, rest, batch, class_ids, head):
        batch = as_segments(batch)
        if accum_steps == 1:
            total, logits, rest, grads = grads_of(lora, frozen, rest, batch, class_ids, head)
        else:
            def body(carry, micro):
                g_sum, t_sum, rest = carry
                t, logits, rest, g = grads_of(lora, frozen, rest, micro, class_ids, head)
                return (jax.tree.map(jnp.add, g_sum, g), t_sum + t, rest), logits

            zeros = jax.tree.map(jnp.zeros_like, lora)
            (grads, total, rest), logits = jax.lax.scan(body, (zeros, jnp.float32(0), rest),
                                                        _accumulate(batch, accum_steps))
            logits = jnp.moveaxis(logits, 0, 1).reshape(-1, *logits.shape[2:])
        w = batch["weights"].astype(jnp.float32)
        denom = jnp.maximum(jnp.sum(w), 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, opt_state, lora)
        lora = optax.apply_updates(lora, updates)
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * w)
        # A finite loss can still produce non-finite params (NaN learning rate, overflow in the
        # update); the loop stops on either before such a state is checkpointed.
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(lora)]))
        metrics = {"loss": total / denom, "grad_norm": optax.global_norm(grads), "correct": correct, "count": jnp.sum(w),
                   "params_finite": finite.astype(jnp.float32)}
        return lora, opt_state, rest, metrics

    if not jit:
        return step
    if shardings is None:
        return jax.jit(step, donate_argnums=(0, 1, 3))
    s = shardings
    return jax.jit(_traced_in_mesh(step, s), donate_argnums=(0, 1, 3),
                   in_shardings=(s.lora, s.opt_state, s.frozen, s.rest, s.batch, s.replicated, s.replicated),
                   out_shardings=(s.lora, s.opt_state, s.rest, s.replicated))


def make_score_step(graphdef: Any, jit: bool = True, shardings: StepShardings | None = None,
                    with_hidden: bool = False) -> Callable:
    """`score(lora, frozen, rest, batch, class_ids, head) -> (rows, S, classes)` probabilities
    (replicated on every device when `shardings` are given, so every host can read them).
    `with_hidden`: also the (rows, S, embed) last-token hidden states the probabilities
    come from (what `suggest` measures diversity with), at no extra compute."""

    def score(lora, frozen, rest, batch, class_ids, head):
        model = nnx.merge(graphdef, lora, frozen, rest)
        hidden = segment_hidden(model, batch, head)
        probs = jax.nn.softmax(model.project(hidden, class_ids).astype(jnp.float32), axis=-1)
        return (probs, hidden.astype(jnp.float32)) if with_hidden else probs

    if not jit:
        return score
    if shardings is None:
        return jax.jit(score)
    s = shardings
    return jax.jit(_traced_in_mesh(score, s), in_shardings=(s.lora, s.frozen, s.rest, s.batch, s.replicated, s.replicated),
                   out_shardings=s.replicated)
