"""The concerns around a fit, one callback each: the divergence guard, the progress bar,
per-epoch evaluation, W&B tracking, checkpoints (and resume), and whatever a sweep
trial, a test or a user adds.

The training loop (`toolkit.train.loop.fit`) only steps, reads metrics back at the
points its callbacks ask for, and keeps the epoch's record; everything else happens
in a callback, so a run, a sweep trial and `AgileClassifier.fit` differ only in the
list they pass. In the spirit of Levanter's `trainer.add_hook(fn, every=N)`:
`every = N` makes the loop read metrics back and call `on_step` after every N-th step.

Callbacks run in list order. `fit` puts the divergence guard first; per-epoch
evaluation must come before the callbacks that record an epoch (tracking,
checkpoints, a sweep's report), since it adds its metrics to the epoch's record.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class FitState:
    """What a fit is at a moment: the trained state, where it is, and what it has counted.

    Callbacks read it, and those that restore a run (checkpoints) write it."""

    lora: Any
    opt_state: Any
    rest: Any
    total_steps: int
    steps_per_epoch: list[int]
    learning_rates: np.ndarray  # of every step, computed once (no eager device op per step)
    step: int = 0
    epoch: int = 0  # 0-based, the epoch running (or, after the last, cfg.epochs)
    batch_in_epoch: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    last_checkpoint: Path | None = None  # the newest step directory on disk, for error messages and reports
    tokens: int = 0  # real tokens trained on so far, every process's rows
    flops: float = 0.0  # their FLOPs
    device_kind: str = ""
    num_devices: int = 1
    stop: str | None = None  # set by a callback (why): the loop ends after this epoch

    @property
    def last_epoch(self) -> bool:
        return self.stop is not None or self.epoch + 1 >= len(self.steps_per_epoch)

    def tree(self) -> dict[str, Any]:
        """The checkpointed tree; `{lora, opt_state, rest}` is built here and nowhere else."""
        return {"lora": self.lora, "opt_state": self.opt_state, "rest": self.rest}

    @property
    def learning_rate(self) -> float:
        return float(self.learning_rates[min(self.step, len(self.learning_rates) - 1)])


@dataclasses.dataclass(frozen=True)
class StepMetrics:
    """One step's metrics on the host (loss, grad_norm, correct, count, params_finite)."""

    step: int
    metrics: dict[str, float]


class Callback:
    """One concern of a fit; override the hooks it needs (each is a no-op here).

    `every`: call `on_step` after every `every`-th step and the last (0: never); the
    loop reads the pending steps' metrics back first, and only at such points, so
    the host never waits on a step it does not need to."""

    every: int = 0

    def on_fit_start(self, fit: FitState) -> None:
        """Before the first step (a resumed run has its state restored here)."""

    def on_batch(self, fit: FitState, batch: Any) -> None:
        """This process's rows of the next step, before it is dispatched."""

    def on_metrics(self, fit: FitState, steps: list[StepMetrics]) -> None:
        """The host metrics of every step since the last read (at each read point)."""

    def on_step(self, fit: FitState) -> None:
        """After every `every`-th step, its metrics read."""

    def on_epoch_end(self, fit: FitState, record: dict[str, Any]) -> None:
        """The epoch's record (already in `fit.history`): add metrics to it, or record it."""

    def close(self) -> None:
        """The fit has ended, well or not: release what was opened."""


class DivergenceGuard(Callback):
    """Stops at the first non-finite loss or update, before a checkpoint could keep it."""

    def on_metrics(self, fit: FitState, steps: list[StepMetrics]) -> None:
        for s in steps:
            loss = s.metrics["loss"]
            if np.isfinite(loss) and s.metrics["params_finite"]:
                continue
            what = f"loss became {loss}" if not np.isfinite(loss) else "the LoRA update became NaN/Inf"
            where = (f"last good checkpoint: {fit.last_checkpoint}" if fit.last_checkpoint is not None
                     else "no checkpoint was written")
            raise TrainingDiverged(f"{what} at epoch {fit.epoch + 1}, step {s.step}; {where}. "
                                   "Lower train.learning_rate or train.grad_clip, or check the data.")


class Progress(Callback):
    """A tqdm bar of steps with rate and ETA, the loss and learning rate beside it."""

    def __init__(self, every: int, enabled: bool = True):
        self.every, self.enabled, self.bar = every, enabled, None

    def on_fit_start(self, fit: FitState) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=fit.total_steps, initial=fit.step, unit="step", disable=not self.enabled,
                        dynamic_ncols=True, desc="train")

    def on_metrics(self, fit: FitState, steps: list[StepMetrics]) -> None:
        if self.bar is not None and steps:
            self.bar.update(len(steps))
            self.bar.set_postfix(epoch=fit.epoch + 1, loss=f"{steps[-1].metrics['loss']:.4f}",
                                 lr=f"{fit.learning_rates[steps[-1].step]:.2e}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class WarmStart(Callback):
    """Starts the fit from trained adapters instead of fresh ones: the agile loop's next
    round builds on the last (`AgileClassifier(warm_start=True)`, `agile-train --continue`).
    Put it before `Checkpointing`: resuming a killed run still restores that run's own
    checkpoint. The optimizer state stays fresh (a new round has a new schedule)."""

    def __init__(self, lora: Any):
        self.lora = lora

    def on_fit_start(self, fit: FitState) -> None:
        import jax
        import jax.numpy as jnp

        if jax.tree.structure(self.lora) != jax.tree.structure(fit.lora):
            raise ValueError("warm start: the adapters to start from are not this model's (another LoRA rank, "
                             "targets or train.trainable); train from scratch, or match the earlier run's settings")
        fit.lora = jax.tree.map(jnp.copy, self.lora)  # the step donates its inputs: the source stays whole


class EpochEval(Callback):
    """Scores held-out rows after each epoch: `evaluate(fit)` returns the metrics to add to
    the epoch's record (and may log plots of its own)."""

    def __init__(self, evaluate: Callable[[FitState], dict[str, Any]]):
        self.evaluate = evaluate

    def on_epoch_end(self, fit: FitState, record: dict[str, Any]) -> None:
        record.update(self.evaluate(fit) or {})


class EarlyStop(Callback):
    """Ends the fit once `cfg.metric` (already in the epoch's record: after `EpochEval`) has
    not improved by more than `cfg.min_delta` for `cfg.patience` epochs, and leaves the
    best epoch's adapters in the fit (a device copy is kept, no host round trip). Put it
    after the callbacks that record an epoch: they see the epoch as trained, and a
    checkpoint keeps the step's real state. The last record says which epoch was kept.

    On resume the best value and the patience count come from the history; adapters of a
    best epoch from before the resume are in the run's best checkpoint, not here."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.best: tuple[int, float] | None = None  # (epoch, value)
        self.best_lora: Any = None
        self.bad = 0

    def _observe(self, epoch: int, value: float) -> bool:
        """Count one epoch's value; True when it is the new best."""
        if self.best is not None:
            delta = value - self.best[1] if self.cfg.mode == "max" else self.best[1] - value
            if delta <= self.cfg.min_delta:
                self.bad += 1
                return False
        self.best, self.bad = (epoch, value), 0
        return True

    def on_fit_start(self, fit: FitState) -> None:
        for record in fit.history:  # a resumed run
            if record.get(self.cfg.metric) is not None:
                self._observe(record["epoch"], record[self.cfg.metric])

    def on_epoch_end(self, fit: FitState, record: dict[str, Any]) -> None:
        import jax
        import jax.numpy as jnp

        value = record.get(self.cfg.metric)
        if value is None:
            raise ValueError(f"train.early_stopping.metric {self.cfg.metric} is not scored each epoch (the epoch "
                             f"has {sorted(k for k in record if k.startswith('eval_'))}); give eval rows "
                             "(data.validation_size > 0, or fit(eval_texts=...)) or choose another metric")
        if self._observe(record["epoch"], value):
            self.best_lora = jax.tree.map(jnp.copy, fit.lora)
        elif self.bad >= self.cfg.patience:
            fit.stop = f"{self.cfg.metric} did not improve by more than {self.cfg.min_delta} for {self.bad} epoch(s)"
        if fit.last_epoch:
            kept, best = self.best
            if self.best_lora is not None:
                fit.lora = self.best_lora
            record.update({"kept_epoch": kept if self.best_lora is not None else record["epoch"],
                           "kept_reason": (f"best {self.cfg.metric} {best:.4f} at epoch {kept}"
                                           + (f"; stopped: {fit.stop}" if fit.stop else "")
                                           + ("" if self.best_lora is not None else
                                              "; that epoch was before the resume, so the last is kept"))})


class Tracking(Callback):
    """Streams training to a `toolkit.tracking.Tracker` (W&B): loss, learning rate, gradient
    norm, tokens/s and MFU every `every` steps, and each epoch's record."""

    def __init__(self, tracker: Any, every: int, peak_tflops: float | None = None):
        self.tracker, self.every, self.peak_tflops = tracker, every, peak_tflops
        self._window: tuple[float, int, float] | None = None
        self._last: dict[str, float] = {}

    def on_fit_start(self, fit: FitState) -> None:
        self._window = (time.perf_counter(), fit.tokens, fit.flops)

    def on_metrics(self, fit: FitState, steps: list[StepMetrics]) -> None:
        if steps:
            self._last = steps[-1].metrics

    def on_step(self, fit: FitState) -> None:
        from toolkit.train.flops import mfu

        t0, tokens0, flops0 = self._window
        dt = max(time.perf_counter() - t0, 1e-9)
        self.tracker.log({"train/loss": self._last.get("loss"), "train/learning_rate": fit.learning_rate,
                          "train/grad_norm": self._last.get("grad_norm"),
                          "train/tokens_per_s": (fit.tokens - tokens0) / dt,
                          "train/mfu": mfu((fit.flops - flops0) / dt, fit.device_kind, fit.num_devices,
                                           self.peak_tflops),
                          "train/epoch": fit.epoch + fit.batch_in_epoch / max(fit.steps_per_epoch[fit.epoch], 1)},
                         step=fit.step)
        self._window = (time.perf_counter(), fit.tokens, fit.flops)

    def on_epoch_end(self, fit: FitState, record: dict[str, Any]) -> None:
        self.tracker.log({f"epoch/{k}": v for k, v in record.items() if k not in ("epoch", "step")}, step=fit.step)


class Checkpointing(Callback):
    """Orbax checkpoints every `checkpoint.every_steps` steps and at each epoch's end (ranked
    by the epoch's metrics), and, with `resume`, the run continued from the latest one.

    A checkpoint holds the tree of `FitState.tree()`, the step, the data position (epoch,
    batch within it), the history and the run config, whose unchanged sections
    `check_same_run` enforces on resume."""

    def __init__(self, checkpointer: Any, *, resume: bool = False, run_config: dict[str, Any] | None = None,
                 check_same_run: Callable[[dict[str, Any], dict[str, Any], Any], Any] | None = None):
        self.checkpointer, self.resume, self.run_config = checkpointer, resume, run_config or {}
        self.check_same_run = check_same_run
        self.every = checkpointer.cfg.every_steps or 0

    def on_fit_start(self, fit: FitState) -> None:
        ck = self.checkpointer
        if not (self.resume and ck.latest_step() is not None):
            return
        state, meta = ck.restore(fit.tree())
        if self.check_same_run is not None:
            self.check_same_run(meta.get("config") or {}, self.run_config, ck.directory)
        fit.lora, fit.opt_state, fit.rest = state["lora"], state["opt_state"], state["rest"]
        fit.step, fit.epoch, fit.batch_in_epoch = int(meta["step"]), int(meta["epoch"]), int(meta["batch_in_epoch"])
        fit.history = list(meta.get("history", []))
        fit.last_checkpoint = ck.directory / str(fit.step)

    def _save(self, fit: FitState, epoch: int, batch_in_epoch: int, metrics: dict[str, Any] | None = None) -> None:
        meta = {"step": fit.step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "history": fit.history,
                "config": self.run_config}
        self.checkpointer.save(fit.step, fit.tree(), meta, metrics)
        fit.last_checkpoint = self.checkpointer.directory / str(fit.step)

    def on_step(self, fit: FitState) -> None:
        if fit.batch_in_epoch < fit.steps_per_epoch[fit.epoch]:  # an epoch's end saves in on_epoch_end
            self._save(fit, fit.epoch, fit.batch_in_epoch)

    def on_epoch_end(self, fit: FitState, record: dict[str, Any]) -> None:
        self._save(fit, fit.epoch + 1, 0, record)

    def close(self) -> None:
        self.checkpointer.close()  # Orbax's threads end here, not at interpreter exit


class AfterEpoch(Callback):
    """Calls `fn(record, step_dir)` once the epoch's checkpoint is on disk (`step_dir` None
    without checkpoints); a sweep trial reports both to Ray this way."""

    def __init__(self, fn: Callable[[dict[str, Any], Path | None], None]):
        self.fn = fn

    def on_epoch_end(self, fit: FitState, record: dict[str, Any]) -> None:
        at = fit.last_checkpoint
        self.fn(record, at if at is not None and at.name == str(fit.step) else None)


def from_import_path(path: str) -> Callable[..., Callback]:
    """`module:Name` -> the object it names (a run config's `callbacks` entries)."""
    import importlib

    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"callbacks: {path!r} is not module:Name (e.g. my_package.callbacks:LogInputs)")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"callbacks: {path!r} cannot be imported ({e}); is its module on PYTHONPATH?") from None
