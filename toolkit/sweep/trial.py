"""One sweep trial: a Ray Tune function that runs the sharded trainer as a Ray
Train `JaxTrainer` job (one JAX process per host), and the code each of those
processes runs.

The Tune function (`trial_driver`) never touches JAX; JAX is imported only in
`worker_loop`, on the hosts that own the accelerators. Each worker runs
`run_experiment`, exactly what `launch/train.py` runs, and reports every
epoch's metrics with the epoch's Orbax checkpoint; Ray Train restarts failed
workers from the last reported checkpoint, and a rerun of the same trial (a
Tune retry, `Tuner.restore`) finds it in Ray's storage.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from toolkit.config import DistributedSection, RunConfig
from toolkit.io_utils import atomic_dir
from toolkit.sweep.config import SweepConfig

# What each epoch reports to Tune (besides epoch/step), and what the last report
# adds from the held-out test evaluation.
EPOCH_METRICS = ("train_loss", "train_accuracy", "eval_f1", "eval_roc_auc", "eval_pr_auc", "eval_accuracy",
                 "eval_balanced_accuracy", "eval_share_predicted_positive", "tokens_per_s", "epoch_seconds", "mfu")
TEST_METRICS = ("f1", "roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "share_predicted_positive",
                "fit_seconds", "eval_seconds", "examples_per_s_eval")


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tune's nested trial config -> {"train.learning_rate": ...}."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def scaling_config(cfg: SweepConfig) -> Any:
    import ray.train

    r = cfg.sweep.resources
    if r.use_tpu:
        return ray.train.ScalingConfig(num_workers=r.num_workers, use_tpu=True, topology=r.tpu_topology,
                                       accelerator_type=r.tpu_accelerator_type,
                                       resources_per_worker={"TPU": r.tpus_per_worker},
                                       placement_strategy="SPREAD")
    resources = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        resources["GPU"] = r.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=r.gpus_per_worker > 0,
                                   resources_per_worker=resources, placement_strategy=r.placement_strategy)


def trial_driver(params: dict[str, Any], sweep: SweepConfig) -> None:
    """Tune function: this trial's run config -> a JaxTrainer job over its workers."""
    import ray.train
    import ray.tune
    from ray.train.v2.jax import JaxTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = ray.tune.get_context().get_trial_name()
    run = sweep.trial_run(flatten(params), trial)
    trainer = JaxTrainer(
        worker_loop,
        train_loop_config={"run": run, "trial": trial, "metric": sweep.sweep.scheduler.metric,
                           "mode": sweep.sweep.scheduler.mode},
        scaling_config=scaling_config(sweep),
        run_config=ray.train.RunConfig(
            # Same name and storage on every rerun of this trial: Ray Train then hands
            # the workers the last checkpoint it stored (ray.train.get_checkpoint).
            name=trial, storage_path=str(sweep.sweep_dir / "train"),
            failure_config=ray.train.FailureConfig(max_failures=sweep.sweep.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=sweep.sweep.keep_checkpoints),
            callbacks=[TuneReportCallback()],
            worker_runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}},
        ),
    )
    trainer.fit()


# ----------------------------------------------------------------- workers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _join_job(run: RunConfig, rank: int, world: int) -> RunConfig:
    """Make this worker one process of a `world`-process JAX job.

    On TPU / GPU Ray's JaxConfig has already called `jax.distributed.initialize`.
    On CPU it does not, so rank 0 opens a coordinator port and every worker
    joins it (this is also what lets a CPU test prove the multi-host path).
    """
    import jax
    import ray
    from ray.train.collective import broadcast_from_rank_zero

    if world == 1 or jax.distributed.is_initialized() or run.distributed.coordinator_address:
        return run
    address = f"{ray.util.get_node_ip_address()}:{_free_port()}" if rank == 0 else None
    address = broadcast_from_rank_zero(address)
    return dataclasses.replace(run, distributed=DistributedSection(address, world, rank))


def _restore(run: RunConfig, checkpoint: Any, rank: int) -> RunConfig:
    """Put Ray's last checkpoint of this trial (one Orbax step directory) into the
    run's checkpoint directory and resume from it. A later local checkpoint (a
    mid-epoch save on the same host) is kept and wins, losing less work."""
    from ray.train.collective import barrier

    if rank == 0:
        target = run.run_dir / "checkpoints"
        with checkpoint.as_directory() as d:
            for step in Path(d).iterdir():
                if step.is_dir() and not (target / step.name).exists():
                    with atomic_dir(target / step.name) as tmp:
                        shutil.copytree(step, tmp, dirs_exist_ok=True)
    barrier()
    return dataclasses.replace(run, resume=True)


class _Reporter:
    """Sends each epoch to Ray Train (and through it to Tune). The last epoch is held
    back and sent together with the test metrics, so a scheduler that stops a trial
    at its final epoch cannot cut the test evaluation off."""

    def __init__(self, rank: int, last_epoch: int, metric: str | None = None, mode: str = "max"):
        self.rank, self.last_epoch, self.metric, self.mode = rank, last_epoch, metric, mode
        self.pending: tuple[dict[str, Any], Path | None] | None = None

    def _metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        out = {k: record[k] for k in ("epoch", "step", *EPOCH_METRICS) if record.get(k) is not None}
        if self.metric and out.get(self.metric) is None:
            # Undefined this epoch (e.g. ROC-AUC on a one-class validation set): the worst
            # value, flagged, so Tune ranks the trial last instead of failing it.
            out[self.metric] = -1.0 if self.mode == "max" else 1e30
            out[f"{self.metric}_placeholder"] = 1
        return out

    def epoch(self, record: dict[str, Any], step_dir: Path | None) -> None:
        metrics = self._metrics(record)
        if record["epoch"] >= self.last_epoch:
            self.pending = (metrics, step_dir)
        else:
            self._send(metrics, step_dir)

    def final(self, result: dict[str, Any]) -> None:
        # No pending epoch: a restart found every epoch done; report the last one again.
        history = result.get("history") or [{"epoch": self.last_epoch}]
        metrics, step_dir = self.pending or (self._metrics(history[-1]), None)
        metrics.update({f"test_{k}": result[k] for k in TEST_METRICS if result.get(k) is not None})
        metrics["finished"] = 1
        self._send(metrics, step_dir)

    def _send(self, metrics: dict[str, Any], step_dir: Path | None) -> None:
        import ray.train

        if self.rank != 0 or step_dir is None or not Path(step_dir).is_dir():
            ray.train.report(metrics, checkpoint=None)
            return
        # Ray copies the directory into its storage; hand it a copy laid out as
        # <step>/..., since Orbax may delete the original when it rotates checkpoints.
        staging = Path(tempfile.mkdtemp(prefix="agile-ray-ckpt-"))
        try:
            shutil.copytree(step_dir, staging / Path(step_dir).name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def worker_loop(payload: dict[str, Any]) -> None:
    """Runs on every worker of a trial (one per host)."""
    import ray.train

    from toolkit.compile_cache import enable_compilation_cache
    from toolkit.quiet import quiet_libraries
    from toolkit.experiment import run_experiment
    from toolkit.train.callbacks import AfterEpoch

    # Trials are fresh processes with the same shapes: later trials and restarted
    # workers read back what an earlier one compiled (the learning rate is optimizer
    # state, not a compiled constant).
    enable_compilation_cache()
    quiet_libraries()  # Orbax logs each checkpoint at INFO in a Ray worker

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    run: RunConfig = _join_job(payload["run"], rank, world)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        run = _restore(run, checkpoint, rank)
    elif run.run_dir.is_dir() and any(run.run_dir.iterdir()):
        # Tune restarted this trial before it reported a checkpoint: the dir is this same
        # trial's earlier attempt (the sweep owns it), so continue it rather than be refused.
        run = dataclasses.replace(run, resume=True)
    reporter = _Reporter(rank, run.train.epochs, payload.get("metric"), payload.get("mode", "max"))
    result = run_experiment(run, progress=False, callbacks=[AfterEpoch(reporter.epoch)])
    reporter.final(result)
