"""Training and scoring loops on one host: feed batches, call the compiled steps.

No Python work per step beyond moving the next numpy batch in; everything
else (loss, gradients, optimizer) is inside `step.py`'s jitted functions.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from toolkit.config import TrainConfig
from toolkit.data.pipeline import make_epoch, num_batches, sorted_batches
from toolkit.train.step import ModelParts, make_score_step, make_train_step


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    warmup = int(round(cfg.warmup_ratio * total_steps))
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
                                    [max(warmup, 1)]) if warmup else optax.constant_schedule(lr)
    if cfg.schedule == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))],
            [max(warmup, 1)])
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(total_steps, warmup + 1), end_value=0.0)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, total_steps)
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(schedule, weight_decay=cfg.weight_decay))
    return tx, schedule


def _device_batch(b) -> dict[str, jax.Array]:
    return {"tokens": jnp.asarray(b.tokens), "lengths": jnp.asarray(np.maximum(b.lengths, 1)),
            "labels": jnp.asarray(b.labels), "weights": jnp.asarray(b.weights)}


def fit(
    parts: ModelParts,
    ids: Sequence[Sequence[int]],
    labels: np.ndarray,
    class_ids: Sequence[int],
    cfg: TrainConfig,
    *,
    max_length: int,
    pad_id: int = 0,
    on_epoch_end: Callable[[int, Any], dict[str, Any]] | None = None,
    progress: bool = True,
    head: Sequence[int] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Train the adapters; returns (final LoRA state, per-epoch history).

    `on_epoch_end(epoch, lora)` may evaluate and return metrics to record.
    With `head`, `ids` are each example's tokens after that shared prefix.
    """
    steps_per_epoch = num_batches([len(x) for x in ids], cfg.batch_size, max_length)
    total = steps_per_epoch * cfg.epochs
    tx, schedule = make_optimizer(cfg, total)
    cids = jnp.asarray(class_ids, jnp.int32)
    step_fn = make_train_step(parts.train_graph, tx, cids, cfg.loss,
                              head=None if head is None else jnp.asarray(head, jnp.int32))
    lora = jax.tree.map(jnp.copy, parts.lora)  # the step donates its inputs
    rest = jax.tree.map(jnp.copy, parts.rest)
    opt_state = tx.init(lora)
    history: list[dict[str, Any]] = []
    bar = tqdm(total=total, unit="step", disable=not progress, dynamic_ncols=True, desc="train")
    step = 0
    for epoch in range(cfg.epochs):
        t0, tokens_seen = time.perf_counter(), 0
        sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
        for b in make_epoch(ids, labels, batch_size=cfg.batch_size, max_length=max_length, epoch=epoch,
                            seed=cfg.seed, shuffle=True, pad_id=pad_id):
            lora, opt_state, rest, m = step_fn(lora, opt_state, parts.frozen, rest, _device_batch(b))
            m = jax.device_get(m)
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(f"loss became {m['loss']} at epoch {epoch} step {step}; "
                                         "lower train.learning_rate or check the data")
            sums["loss"] += float(m["loss"]) * float(m["count"])
            sums["correct"] += float(m["correct"])
            sums["count"] += float(m["count"])
            tokens_seen += int(b.lengths.sum())
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(m['loss']):.4f}", lr=f"{float(schedule(step)):.2e}")
        dt = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "step": step, "train_loss": sums["loss"] / max(sums["count"], 1),
                  "train_accuracy": sums["correct"] / max(sums["count"], 1), "epoch_seconds": dt,
                  "tokens_per_s": tokens_seen / max(dt, 1e-9)}
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch, lora) or {})
        history.append(record)
    bar.close()
    return lora, history


def predict_proba(
    parts: ModelParts,
    lora: Any,
    ids: Sequence[Sequence[int]],
    class_ids: Sequence[int],
    *,
    batch_size: int,
    max_length: int,
    pad_id: int = 0,
    progress: bool = False,
    head: Sequence[int] | None = None,
) -> np.ndarray:
    """(n, classes) probabilities in input order, from length-sorted batches."""
    score = _score_fn(parts.eval_graph, tuple(int(c) for c in class_ids), None if head is None else tuple(head))
    out = np.zeros((len(ids), len(class_ids)), np.float32)
    total = -(-len(ids) // batch_size)
    for b in tqdm(sorted_batches(ids, batch_size=batch_size, max_length=max_length, pad_id=pad_id),
                  total=total, unit="batch", disable=not progress, desc="score"):
        probs = np.asarray(score(lora, parts.frozen, parts.rest, jnp.asarray(b.tokens),
                                 jnp.asarray(np.maximum(b.lengths, 1))))
        real = b.index >= 0
        out[b.index[real]] = probs[real]
    return out


_SCORE_CACHE: dict[Any, Callable] = {}


def _score_fn(graphdef: Any, class_ids: tuple[int, ...], head: tuple[int, ...] | None) -> Callable:
    # One compiled scorer per (model structure, classes, head): repeated predict calls reuse it.
    key = (graphdef, class_ids, head)
    if key not in _SCORE_CACHE:
        _SCORE_CACHE[key] = make_score_step(graphdef, jnp.asarray(class_ids, jnp.int32),
                                            head=None if head is None else jnp.asarray(head, jnp.int32))
    return _SCORE_CACHE[key]
