"""The optimizer and its learning-rate schedule: what the train loop, the linear head and
the memory planner all build, so "the optimizer" is one fact."""

from __future__ import annotations

import optax

from toolkit.config import TrainConfig


def make_schedule(cfg: TrainConfig, total_steps: int, peak: float | None = None) -> optax.Schedule:
    """Linear warm-up over `warmup_ratio` of the steps, then cosine / linear decay or constant,
    peaking at `peak` (default: the learning rate)."""
    lr = cfg.learning_rate if peak is None else peak
    warmup = int(round(cfg.warmup_ratio * total_steps))
    if cfg.schedule == "cosine":
        if warmup == 0:  # a short fit (under 1 / warmup_ratio steps): no step at a learning rate of 0
            return optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=0.0)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), end_value=0.0)
    after = (optax.constant_schedule(lr) if cfg.schedule == "constant"
             else optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1)))
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(cfg: TrainConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW under the schedule, clipped; returns (optimizer, learning-rate schedule).

    The learning rate and weight decay live in the optimizer state (as arrays), and
    the schedule's shape (peak 1) multiplies the update: the compiled train step is
    then the same program for every learning rate, so sweep trials that differ only
    in it reuse each other's compilations (JAX's persistent cache).
    """
    shape = make_schedule(cfg, total_steps, peak=1.0)
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.inject_hyperparams(optax.adamw)(learning_rate=cfg.learning_rate,
                                                           weight_decay=cfg.weight_decay),
                     optax.scale_by_schedule(shape))
    return tx, make_schedule(cfg, total_steps)
