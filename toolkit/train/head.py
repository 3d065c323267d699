"""`train.trainable: head`: the frozen model as a feature extractor, a linear head trained on it.

The feature of a text is the final-norm hidden state at its last prompt token, the
vector the class tokens' logits are read from. The head starts as those class tokens'
embedding rows (with the model's final soft-cap), so before any step it *is* the
zero-shot classifier, and training moves it from there. Features are computed once
per text (one pass of the batched scorer) and reused by every epoch, so an epoch costs
a few small matmuls: the whole fit is one scoring pass plus seconds.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolkit.config import TrainConfig


def head_logits(features: Any, weights: Any, softcap: float | None) -> Any:
    logits = features @ weights.T
    return softcap * jnp.tanh(logits / softcap) if softcap else logits


def head_probs(features: np.ndarray, weights: np.ndarray, softcap: float | None) -> np.ndarray:
    return np.asarray(jax.nn.softmax(head_logits(jnp.asarray(features), jnp.asarray(weights), softcap), axis=-1))


def fit_head(features: np.ndarray, labels: np.ndarray, init: np.ndarray, cfg: TrainConfig, *,
             softcap: float | None, evaluate: Callable[[np.ndarray, int], dict[str, Any]] | None = None
             ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(trained head, per-epoch history): `cfg.epochs` passes over seeded shuffles in batches
    of `cfg.batch_size`, AdamW on the softmax loss under the run's schedule.
    `evaluate(weights, epoch)` adds held-out metrics to each epoch's record."""
    from toolkit.train.optim import make_optimizer

    n = len(labels)
    steps_per_epoch = -(-n // cfg.batch_size)
    tx, schedule = make_optimizer(cfg, steps_per_epoch * cfg.epochs)
    w = jnp.asarray(init, jnp.float32)
    opt = tx.init(w)

    @jax.jit
    def step(w, opt, h, y, mask):
        def loss_fn(w):
            logits = head_logits(h, w, softcap)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return (losses * mask).sum() / mask.sum(), logits
        (loss, logits), grad = jax.value_and_grad(loss_fn, has_aux=True)(w)
        updates, opt = tx.update(grad, opt, w)
        correct = ((logits.argmax(-1) == y) * mask).sum()
        return optax.apply_updates(w, updates), opt, loss, correct

    feats, y_all = np.asarray(features, np.float32), np.asarray(labels, np.int32)
    history: list[dict[str, Any]] = []
    global_step = 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        total, correct = 0.0, 0.0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            pad = cfg.batch_size - len(idx)  # one shape for every batch: one compiled step
            rows = np.concatenate([idx, np.zeros(pad, np.int64)])
            mask = np.concatenate([np.ones(len(idx)), np.zeros(pad)]).astype(np.float32)
            w, opt, loss, c = step(w, opt, feats[rows], y_all[rows], mask)
            total += float(loss) * len(idx)
            correct += float(c)
            global_step += 1
        record = {"epoch": epoch + 1, "step": global_step, "train_loss": total / n, "train_accuracy": correct / n,
                  "epoch_seconds": time.perf_counter() - t0,
                  "learning_rate_end": float(schedule(global_step - 1))}
        if evaluate is not None:
            record.update(evaluate(np.asarray(w), epoch))
        history.append(record)
    return np.asarray(w), history
