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

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from toolkit.models.gemma import Gemma

FROZEN = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
LOSSES = ("class", "lm")


class ModelParts(NamedTuple):
    train_graph: Any
    eval_graph: Any
    lora: nnx.State
    frozen: nnx.State
    rest: nnx.State


def split_model(model: Gemma) -> ModelParts:
    """Split once; `train_graph` has dropout on, `eval_graph` off."""
    model.eval()
    eval_graph = nnx.graphdef(model)
    model.train()
    train_graph, lora, frozen, rest = nnx.split(model, nnx.LoRAParam, FROZEN, ...)
    model.eval()
    return ModelParts(train_graph, eval_graph, lora, frozen, rest)


def last_hidden(model: Gemma, tokens: jax.Array, lengths: jax.Array, head: jax.Array | None = None) -> jax.Array:
    """Hidden state at each row's last real token (right padding), (batch, embed).

    With `head` (the prompt's shared instruction tokens), `tokens` hold only
    each row's own part and the head is run once for the whole batch.
    """
    mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    prefix = None if head is None else model.prefix(head)
    h = model.hidden_states(tokens, mask, prefix=prefix)
    return h[jnp.arange(tokens.shape[0]), lengths - 1]


def class_logits(model: Gemma, tokens: jax.Array, lengths: jax.Array, class_ids: jax.Array,
                 head: jax.Array | None = None) -> jax.Array:
    return model.project(last_hidden(model, tokens, lengths, head), class_ids).astype(jnp.float32)


def loss_and_logits(
    model: Gemma, batch: dict[str, jax.Array], class_ids: jax.Array, loss: str = "class",
    head: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Weighted mean cross-entropy and the (batch, classes) logits.

    "class": softmax over the class tokens only (what scoring uses).
    "lm": the codelab's objective, softmax over the full vocabulary at the
    label position; the class logits are still returned for metrics.
    """
    last = last_hidden(model, batch["tokens"], batch["lengths"], head)
    if loss == "class":
        logits = model.project(last, class_ids).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    elif loss == "lm":
        vocab = model.project(last).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(vocab, class_ids[batch["labels"]])
        logits = vocab[:, class_ids]
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    w = batch["weights"].astype(jnp.float32)
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0), logits


def make_train_step(
    graphdef: Any, tx: optax.GradientTransformation, class_ids: jax.Array, loss: str = "class",
    jit: bool = True, head: jax.Array | None = None,
) -> Callable:
    """`step(lora, opt_state, frozen, rest, batch) -> (lora, opt_state, rest, metrics)`."""

    def step(lora, opt_state, frozen, rest, batch):
        def objective(lora):
            model = nnx.merge(graphdef, lora, frozen, rest)
            value, logits = loss_and_logits(model, batch, class_ids, loss, head)
            return value, (logits, nnx.state(model, nnx.Not(nnx.Param)))

        (value, (logits, new_rest)), grads = jax.value_and_grad(objective, has_aux=True)(lora)
        updates, opt_state = tx.update(grads, opt_state, lora)
        lora = optax.apply_updates(lora, updates)
        w = batch["weights"]
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * w)
        metrics = {"loss": value, "grad_norm": optax.global_norm(grads), "correct": correct, "count": jnp.sum(w)}
        return lora, opt_state, new_rest, metrics

    return jax.jit(step, donate_argnums=(0, 1, 3)) if jit else step


def make_score_step(graphdef: Any, class_ids: jax.Array, jit: bool = True, head: jax.Array | None = None) -> Callable:
    """`score(lora, frozen, rest, tokens, lengths) -> (batch, classes)` probabilities."""

    def score(lora, frozen, rest, tokens, lengths):
        model = nnx.merge(graphdef, lora, frozen, rest)
        return jax.nn.softmax(class_logits(model, tokens, lengths, class_ids, head), axis=-1)

    return jax.jit(score) if jit else score
