"""The optimizer and its learning-rate schedule: what the train loop, the linear head and
the memory planner all build, so "the optimizer" is one fact."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from toolkit.config import TrainConfig


def _warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return int(round(cfg.warmup_ratio * total_steps))


def schedule_shape(kind: str, count: jax.Array, total: jax.Array, warmup: jax.Array) -> jax.Array:
    """The schedule's multiplier (peak 1) at step `count` of `total`, `warmup` of them warming up.

    Linear warm-up from 0, then cosine / linear decay to 0 or constant. The step counts are
    array values, not Python constants, so the compiled train step is one program for every
    data size (an agile round with more labels, the next fold, a sweep over train sizes); only
    `kind` shapes the program. With `warmup == 0` (a fit shorter than 1 / warmup_ratio steps)
    the first step is at the full rate."""
    c = jnp.asarray(count, jnp.float32)
    total, warmup = jnp.asarray(total, jnp.float32), jnp.asarray(warmup, jnp.float32)
    warm = c / jnp.maximum(warmup, 1.0)
    after = c - warmup
    if kind == "cosine":
        span = jnp.maximum(total, warmup + 1.0) - warmup
        rest = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(after, 0.0, span) / span))
    elif kind == "linear":
        span = jnp.maximum(total - warmup, 1.0)
        rest = 1.0 - jnp.clip(after, 0.0, span) / span
    elif kind == "constant":
        rest = jnp.ones_like(c)
    else:
        raise ValueError(f"train.schedule={kind!r}: use cosine, linear or constant")
    return jnp.where(c < warmup, warm, rest)


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """The learning rate at each step: the same formula the optimizer applies, for logs,
    plots and the history."""
    warmup = _warmup_steps(cfg, total_steps)
    return lambda count: cfg.learning_rate * schedule_shape(cfg.schedule, count, total_steps, warmup)


class ScheduleState(NamedTuple):
    count: jax.Array  # steps taken (int32)
    total: jax.Array  # the fit's steps (int32)
    warmup: jax.Array  # of which warm-up (int32)


def scale_by_schedule_shape(kind: str, total_steps: int, warmup_steps: int) -> optax.GradientTransformation:
    """`optax.scale_by_schedule` with the step counts in the state instead of the program."""

    def init(params: optax.Params) -> ScheduleState:
        del params
        return ScheduleState(jnp.zeros([], jnp.int32), jnp.asarray(total_steps, jnp.int32),
                             jnp.asarray(warmup_steps, jnp.int32))

    def update(updates: optax.Updates, state: ScheduleState, params: optax.Params | None = None):
        del params
        m = schedule_shape(kind, state.count, state.total, state.warmup)
        updates = jax.tree.map(lambda g: m.astype(g.dtype) * g, updates)
        return updates, state._replace(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW under the schedule, clipped; returns (optimizer, learning-rate schedule).

    The learning rate, the weight decay and the schedule's step counts live in the
    optimizer state (as arrays): the compiled train step is then the same program for
    every learning rate and every number of steps, so sweep trials, folds and agile
    rounds reuse each other's compilations (through JAX's persistent cache).
    """
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.inject_hyperparams(optax.adamw)(learning_rate=cfg.learning_rate,
                                                           weight_decay=cfg.weight_decay),
                     scale_by_schedule_shape(cfg.schedule, total_steps, _warmup_steps(cfg, total_steps)))
    return tx, make_schedule(cfg, total_steps)


def program_key(cfg: TrainConfig) -> tuple[str, float]:
    """What of `cfg` the optimizer's update compiles in (everything else `make_optimizer`
    reads is state): the key under which one compiled train step serves many fits."""
    return cfg.schedule, float(cfg.grad_clip)


def optimizer_of(key: tuple[str, float]) -> optax.GradientTransformation:
    """An optimizer whose update is the one every config of `program_key` `key` compiles
    (its state's numbers come from the fit's own `make_optimizer(...).init`)."""
    schedule, grad_clip = key
    return make_optimizer(TrainConfig(schedule=schedule, grad_clip=grad_clip), total_steps=1)[0]
