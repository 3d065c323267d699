"""Training and scoring loops: feed each process's rows, call the compiled steps.

One loop for every scale. The model arrives already placed on a mesh (one
CPU device, a GPU host or a pod); each process builds only its own rows of
every global batch, and `jax.make_array_from_process_local_data` joins them.
Per step the Python side moves the next numpy batch in and reads back four
replicated scalars (the NaN guard needs them); everything else is inside the
jitted step of `step.py`.

Checkpoints (when a `Checkpointer` is given) hold everything needed to
continue bit-exactly: LoRA params, optimizer state, RNG streams, the step and
the data position, whose epoch is rebuilt with the same seed and fast-forwarded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from toolkit.config import TrainConfig
from toolkit.data import packing as packing_lib
from toolkit.data.pipeline import make_epoch, make_packed_epoch, num_batches, packed_steps, sorted_batches
from toolkit.train import mesh as mesh_lib
from toolkit.train.flops import mfu, train_flops_per_token
from toolkit.train.step import ModelParts, StepShardings, make_head, make_score_step, make_train_step

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


class OutOfMemory(MemoryError):
    """A step did not fit in device memory; the message says which knobs to turn."""


def make_schedule(cfg: TrainConfig, total_steps: int, peak: float | None = None) -> optax.Schedule:
    """Linear warm-up over `warmup_ratio` of the steps, then cosine / linear decay or constant,
    peaking at `peak` (default: the learning rate)."""
    lr = cfg.learning_rate if peak is None else peak
    warmup = int(round(cfg.warmup_ratio * total_steps))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(total_steps, warmup + 1),
                                                  end_value=0.0)
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


_HYPER_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _config_hyperparams(opt_state: Any, cfg: TrainConfig) -> Any:
    """The restored optimizer state with the config's learning rate and weight decay:
    the config, not the checkpoint, says how to continue (e.g. a lower rate after
    a divergence)."""
    values = {"learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay}

    def fix(x: Any) -> Any:
        if isinstance(x, _HYPER_STATES):
            return x._replace(hyperparams={k: jax.device_put(np.asarray(values.get(k, v), np.asarray(v).dtype),
                                                             v.sharding) for k, v in x.hyperparams.items()})
        return x

    return jax.tree.map(fix, opt_state, is_leaf=lambda x: isinstance(x, _HYPER_STATES))


@dataclasses.dataclass
class Placement:
    """A model's parts placed on a mesh, with the shardings the compiled steps use."""

    parts: ModelParts
    mesh: Any
    shardings: StepShardings
    model_config: Any = None  # for FLOP / MFU estimates
    _score: Callable | None = dataclasses.field(default=None, repr=False)

    @property
    def dp(self) -> int:
        return mesh_lib.data_parallel_size(self.mesh)

    def score_fn(self) -> Callable:
        """The one compiled scorer of this model on this mesh (classes and head are its
        arguments): per-epoch eval and every later predict share it."""
        if self._score is None:
            self._score = make_score_step(self.parts.eval_graph, shardings=self.shardings)
        return self._score


def place_parts(parts: ModelParts, mesh: Any, model_config: Any = None) -> Placement:
    """Shard frozen weights and adapters by the rule table; RNG streams replicated."""
    rep = mesh_lib.replicated(mesh)
    lora_s = mesh_lib.state_shardings(parts.lora, mesh)
    frozen_s = mesh_lib.state_shardings(parts.frozen, mesh)
    rest_s = jax.tree.map(lambda _: rep, parts.rest)
    placed = parts._replace(lora=mesh_lib.place(parts.lora, lora_s), frozen=mesh_lib.place(parts.frozen, frozen_s),
                            rest=mesh_lib.place(parts.rest, rest_s))
    shardings = StepShardings(lora=lora_s, opt_state=None, frozen=frozen_s, rest=rest_s,
                              batch=mesh_lib.batch_sharding(mesh), replicated=rep)
    return Placement(placed, mesh, shardings, model_config)


def _oom_guard(fn: Callable, cfg: TrainConfig, mesh: Any) -> Callable:
    def guarded(*args):
        try:
            return fn(*args)
        except jax.errors.JaxRuntimeError as e:
            text = str(e)
            if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
                raise OutOfMemory(
                    f"a train step ran out of device memory (global batch {cfg.batch_size}, "
                    f"grad_accum_steps {cfg.grad_accum_steps}, mesh {dict(mesh.shape)}). Lower train.batch_size "
                    "or raise train.grad_accum_steps; set model.remat=full (or dots); shard the frozen weights "
                    "with mesh.fsdp / mesh.tensor; or shorten classifier.max_length. XLA said: "
                    + text.splitlines()[0][:300]) from e
            raise
    return guarded


def _check_batch(cfg: TrainConfig, dp: int) -> None:
    micro = cfg.batch_size // cfg.grad_accum_steps
    if micro % dp:
        raise ValueError(f"train.batch_size={cfg.batch_size} / grad_accum_steps={cfg.grad_accum_steps} = {micro} rows "
                         f"per micro-batch must be a multiple of the data-parallel size {dp} (mesh data x fsdp); "
                         f"use a batch_size that is a multiple of {dp * cfg.grad_accum_steps}")


# What must match to continue a run (a new mesh, name or tracker is fine: Orbax reshards).
_RESUME_KEYS = ("model", "lora", "data", "classifier", "train")
# ... except these, which change how a run continues or reports, not what it trains on or
# in what order: a lower learning rate after a divergence, a bigger eval batch, another
# logging interval, the data's new location. Each change is logged.
RESUME_MAY_CHANGE = frozenset({"train.learning_rate", "train.eval_batch_size", "train.log_every_steps",
                               "train.peak_tflops", "data.local_dir", "data.cache_dir"})


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], where: Any) -> list[str]:
    """The allowed changes ("key: old -> new"); raises on any other."""
    if not saved or not current:
        return []
    diff = [(f"{section}.{k}", f"{section}.{k}: {saved.get(section, {}).get(k)!r} -> {v!r}")
            for section in _RESUME_KEYS for k, v in (current.get(section) or {}).items()
            if saved.get(section, {}).get(k) != v]
    refused = [text for key, text in diff if key not in RESUME_MAY_CHANGE]
    if refused:
        from toolkit.train.checkpoint import CheckpointError

        raise CheckpointError(f"{where} was written by a different config; resuming would not continue the same run "
                              f"({'; '.join(refused[:5])}). Restore those values or start fresh with resume=false "
                              f"(only {', '.join(sorted(RESUME_MAY_CHANGE))} may change on resume)")
    allowed = [text for _, text in diff]
    if allowed:
        log.warning("resuming %s with changed settings: %s", where, "; ".join(allowed))
    return allowed


def _device_batch(b, placement: Placement, global_rows: int) -> dict[str, jax.Array]:
    if hasattr(b, "segment_ids"):
        local = b.device_dict()
    else:
        local = {"tokens": b.tokens, "lengths": np.maximum(b.lengths, 1), "labels": b.labels, "weights": b.weights}
    return mesh_lib.global_batch(placement.mesh, local, global_rows)


def _real_tokens(b) -> int:
    return b.real_tokens if hasattr(b, "segment_ids") else int(b.lengths.sum())


def fit(
    placement: Placement,
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
    checkpointer: Any = None,
    resume: bool = False,
    tracker: Any = None,
    run_config: dict[str, Any] | None = None,
    after_epoch: Callable[[dict[str, Any], Path | None], None] | None = None,
    inspect_batch: Callable[[int, Any], None] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Train the adapters; returns (final LoRA state, per-epoch history).

    `on_epoch_end(epoch, lora)` may evaluate and return metrics to record;
    keys starting with "image/" are PNG paths for the tracker. With `head`,
    `ids` are each example's tokens after that shared prefix. With `resume`,
    training continues from `checkpointer`'s latest checkpoint.
    `after_epoch(record, step_dir)` runs on every process once the epoch's
    checkpoint is on disk (a sweep reports both to Ray); `inspect_batch(step, batch)`
    sees each of this process's batches before its step (input debugging).
    """
    parts, mesh = placement.parts, placement.mesh
    lengths = [len(x) for x in ids]
    if cfg.packing:
        # One fixed token budget per step: one compiled train step for the whole fit.
        shape = packing_lib.train_shape(lengths, cfg.batch_size, max_length,
                                        row_multiple=placement.dp * cfg.grad_accum_steps)
        epoch_steps = [packed_steps(lengths, shape, epoch=e, seed=cfg.seed) for e in range(cfg.epochs)]
        global_rows = shape.padded_rows
    else:
        _check_batch(cfg, placement.dp)
        epoch_steps = [num_batches(lengths, cfg.batch_size, max_length)] * cfg.epochs
        global_rows = cfg.batch_size
    total = sum(epoch_steps)
    tx, schedule = make_optimizer(cfg, total)
    lora = jax.tree.map(jnp.copy, parts.lora)  # the step donates its inputs
    rest = jax.tree.map(jnp.copy, parts.rest)
    opt_shardings = mesh_lib.like_shardings(jax.eval_shape(tx.init, lora), lora, placement.shardings.lora, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(lora)
    shardings = placement.shardings._replace(opt_state=opt_shardings)
    step_fn = _oom_guard(make_train_step(parts.train_graph, tx, cfg.loss, accum_steps=cfg.grad_accum_steps,
                                         shardings=shardings), cfg, mesh)
    class_arr, head_arg = jnp.asarray(class_ids, jnp.int32), make_head(head)
    slice_index, slice_count = mesh_lib.process_rows(mesh, global_rows)
    main = jax.process_index() == 0
    history: list[dict[str, Any]] = []
    step, start_epoch, skip = 0, 0, 0
    if resume and checkpointer is not None and checkpointer.latest_step() is not None:
        state, meta = checkpointer.restore({"lora": lora, "opt_state": opt_state, "rest": rest})
        _check_same_run(meta.get("config") or {}, run_config or {}, checkpointer.directory)
        lora, opt_state, rest = state["lora"], _config_hyperparams(state["opt_state"], cfg), state["rest"]
        step, start_epoch, skip = int(meta["step"]), int(meta["epoch"]), int(meta["batch_in_epoch"])
        history = list(meta.get("history", []))
    device_kind, n_dev = jax.devices()[0].device_kind, jax.device_count()

    def save(epoch: int, batch_in_epoch: int, metrics: dict[str, Any] | None = None) -> None:
        if checkpointer is None:
            return
        meta = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "history": history,
                "config": run_config or {}}
        checkpointer.save(step, {"lora": lora, "opt_state": opt_state, "rest": rest}, meta, metrics)

    def last_good() -> str:
        if checkpointer is None or checkpointer.latest_step() is None:
            return "no checkpoint was written"
        return f"last good checkpoint: {checkpointer.directory}/{checkpointer.latest_step()}"

    bar = tqdm(total=total, initial=step, unit="step", disable=not (progress and main), dynamic_ncols=True,
               desc="train")
    # The learning rate of every step, computed once: no eager device op per step.
    lrs = np.asarray(jax.device_get(jax.vmap(schedule)(jnp.arange(total + 1))), np.float64)
    for epoch in range(start_epoch, cfg.epochs):
        t0, tokens_seen, flops_seen = time.perf_counter(), 0, 0.0
        window_t, window_tokens, window_flops = time.perf_counter(), 0, 0.0
        sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
        batch_in_epoch = skip if epoch == start_epoch else 0
        if cfg.packing:
            batches = make_packed_epoch(ids, labels, shape, epoch=epoch, seed=cfg.seed, pad_id=pad_id,
                                        process_index=slice_index, process_count=slice_count,
                                        skip_batches=batch_in_epoch)
        else:
            batches = make_epoch(ids, labels, batch_size=cfg.batch_size, max_length=max_length, epoch=epoch,
                                 seed=cfg.seed, shuffle=True, pad_id=pad_id, process_index=slice_index,
                                 process_count=slice_count, skip_batches=batch_in_epoch)
        steps_per_epoch = epoch_steps[epoch]
        # Steps dispatched but not yet read: (step, this process's real tokens, device metrics).
        # Metrics stay on device until a read point (every `log_every_steps`, a checkpoint,
        # the epoch's end), so the host never waits on step n before dispatching n+1 and
        # builds the next batch while the step runs. The NaN guard sees each step at the
        # next read, before any checkpoint could keep a diverged state.
        pending: list[tuple[int, int, dict[str, jax.Array]]] = []
        reads = 0

        def read() -> dict[str, float]:
            nonlocal tokens_seen, flops_seen, window_tokens, window_flops, reads
            last: dict[str, float] = {}
            reads += bool(pending)
            host = mesh_lib.to_host([m for *_, m in pending])
            for (at, local_tokens, _), hm in zip(pending, host):
                m = {k: float(v) for k, v in hm.items()}
                if not np.isfinite(m["loss"]) or not m["params_finite"]:
                    bar.close()
                    what = (f"loss became {m['loss']}" if not np.isfinite(m["loss"])
                            else "the LoRA update became NaN/Inf")
                    raise TrainingDiverged(f"{what} at epoch {epoch + 1}, step {at}; {last_good()}. "
                                           "Lower train.learning_rate or train.grad_clip, or check the data.")
                sums["loss"] += m["loss"] * m["count"]
                sums["correct"] += m["correct"]
                sums["count"] += m["count"]
                # Tokens of every process's rows (one global batch) and the FLOPs they cost.
                real = local_tokens * slice_count + (len(head or ()) * int(m["count"]))
                ctx = real / max(m["count"], 1)
                flops = train_flops_per_token(placement.model_config, ctx) * real if placement.model_config else 0.0
                tokens_seen += real
                flops_seen += flops
                window_tokens += real
                window_flops += flops
                last = m
            if pending:
                bar.update(len(pending))
                bar.set_postfix(epoch=epoch + 1, loss=f"{last['loss']:.4f}", lr=f"{lrs[pending[-1][0]]:.2e}")
            pending.clear()
            return last

        for b in batches:
            if inspect_batch is not None:
                inspect_batch(step, b)
            lora, opt_state, rest, m = step_fn(lora, opt_state, parts.frozen, rest,
                                               _device_batch(b, placement, global_rows), class_arr, head_arg)
            step += 1
            batch_in_epoch += 1
            pending.append((step, _real_tokens(b), m))
            log_now = step % cfg.log_every_steps == 0 or step == total
            save_now = bool(checkpointer is not None and checkpointer.cfg.every_steps
                            and step % checkpointer.cfg.every_steps == 0 and batch_in_epoch < steps_per_epoch)
            if not (log_now or save_now or batch_in_epoch == steps_per_epoch):
                continue
            m = read()
            if tracker is not None and log_now:
                dt = max(time.perf_counter() - window_t, 1e-9)
                tracker.log({"train/loss": m["loss"], "train/learning_rate": float(lrs[step]),
                             "train/grad_norm": m["grad_norm"], "train/tokens_per_s": window_tokens / dt,
                             "train/mfu": mfu(window_flops / dt, device_kind, n_dev, cfg.peak_tflops),
                             "train/epoch": epoch + batch_in_epoch / max(steps_per_epoch, 1)}, step=step)
                window_t, window_tokens, window_flops = time.perf_counter(), 0, 0.0
            if save_now:
                save(epoch, batch_in_epoch)
        read()
        dt = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "step": step, "train_loss": sums["loss"] / max(sums["count"], 1),
                  "train_accuracy": sums["correct"] / max(sums["count"], 1), "epoch_seconds": dt,
                  "tokens_per_s": tokens_seen / max(dt, 1e-9),
                  "mfu": mfu(flops_seen / max(dt, 1e-9), device_kind, n_dev, cfg.peak_tflops),
                  "host_reads": reads}
        images: dict[str, Any] = {}
        if on_epoch_end is not None:
            extra = on_epoch_end(epoch, lora) or {}
            images = {k[len("image/"):]: v for k, v in extra.items() if k.startswith("image/")}
            record.update({k: v for k, v in extra.items() if not k.startswith("image/")})
        history.append(record)
        if tracker is not None:
            tracker.log({f"epoch/{k}": v for k, v in record.items() if k not in ("epoch", "step")}, step=step)
            tracker.log_images({f"eval/{k}": v for k, v in images.items()}, step=step)
        save(epoch + 1, 0, record)
        if after_epoch is not None:
            after_epoch(record, checkpointer.directory / str(step) if checkpointer is not None else None)
    bar.close()
    return lora, history


def predict_proba(
    placement: Placement,
    lora: Any,
    ids: Sequence[Sequence[int]],
    class_ids: Sequence[int],
    *,
    batch_size: int,
    max_length: int,
    pad_id: int = 0,
    progress: bool = False,
    head: Sequence[int] | None = None,
    packing: bool = True,
) -> np.ndarray:
    """(n, classes) probabilities in input order.

    Packed (the default): examples longest-first in rows of one shape that
    depends only on (batch_size, max_length, mesh), so every call shares one
    compiled scorer. Unpacked: length-sorted batches of `batch_size` rows.
    Either way a batch's rows are split over the data-parallel devices like a
    train batch; probabilities come back replicated, so every process returns
    the full array.
    """
    parts, mesh = placement.parts, placement.mesh
    out = np.zeros((len(ids), len(class_ids)), np.float32)
    if not len(ids):
        return out
    dp = placement.dp
    score = placement.score_fn()
    class_arr, head_arg = jnp.asarray(class_ids, jnp.int32), make_head(head)
    if packing:
        shape = packing_lib.score_shape(batch_size, max_length, row_multiple=dp)
        lengths = [len(x) for x in ids]
        order = packing_lib.score_order(lengths)
        rows = shape.padded_rows
        total = len(packing_lib.plan(order, lengths, shape))
        batches = make_packed_epoch(ids, None, shape, shuffle=False, pad_id=pad_id, order=order)
    else:
        rows = -(-batch_size // dp) * dp
        total = -(-len(ids) // rows)
        batches = sorted_batches(ids, batch_size=rows, max_length=max_length, pad_id=pad_id)
    slice_index, slice_count = mesh_lib.process_rows(mesh, rows)
    per = rows // slice_count
    lo = slice_index * per
    main = jax.process_index() == 0
    for b in tqdm(batches, total=total, unit="batch", disable=not (progress and main), desc="score"):
        if packing:
            local = {k: v[lo: lo + per] for k, v in b.device_dict().items()}
        else:
            local = {"tokens": b.tokens[lo: lo + per], "lengths": np.maximum(b.lengths, 1)[lo: lo + per],
                     "labels": b.labels[lo: lo + per], "weights": b.weights[lo: lo + per]}
        g = mesh_lib.global_batch(mesh, local, rows)
        probs = np.asarray(mesh_lib.to_host(score(lora, parts.frozen, parts.rest, g, class_arr, head_arg)))
        probs = probs.reshape(-1, probs.shape[-1])
        index = np.asarray(b.index).reshape(-1)
        real = index >= 0
        out[index[real]] = probs[real]
    return out
