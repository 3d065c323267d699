"""The sweep driver: a sweep config -> a Ray Tune experiment -> a results table.

Runs where `ray job submit` (or a user) starts it, usually the head node, and
never imports JAX: on a TPU VM that would take the TPU away from the trials.
It connects to the cluster in `RAY_ADDRESS` (set by `ray job submit`) or, with
none, starts an embedded local Ray. Everything lands in the sweep directory
(`<output_dir>/<name>/`):

    sweep.yaml            the resolved config
    tune/                 Ray Tune's experiment state (what `resume=true` restores)
    train/<trial>/        Ray Train's stored checkpoints per trial
    trials/<trial>/       each trial's run: metrics.json, plots, wandb/, checkpoints/, classifier/
    results.csv/.json/.md the trial table; sweep_<metric>.png
    best/                 the best trial's classifier (sweep.export_best)
"""

from __future__ import annotations

import os
import time
from typing import Any

from toolkit.config import ConfigError, set_dotted
from toolkit.sweep.config import SweepConfig

# The trial driver's own Ray actor only waits on its workers; it still needs a
# non-zero request (Tune refuses an empty one).
DRIVER_CPUS = 0.01


def _distribution(kind: str, args: list[Any]) -> Any:
    from ray import tune

    return {
        "grid": lambda: tune.grid_search(args),
        "choice": lambda: tune.choice(args),
        "uniform": lambda: tune.uniform(*args),
        "loguniform": lambda: tune.loguniform(*args),
        "randint": lambda: tune.randint(*args),
        "lograndint": lambda: tune.lograndint(*args),
    }[kind]()


def param_space(space: dict[str, Any]) -> dict[str, Any]:
    """{"train.learning_rate": {loguniform: [a, b]}} -> Tune's nested search space."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        (kind, args), = spec.items()
        set_dotted(out, key, _distribution(kind, args))
    return out


def max_epochs(cfg: SweepConfig) -> int:
    spec = cfg.sweep.space.get("train.epochs")
    if spec is None:
        return cfg.run.train.epochs
    (kind, args), = spec.items()
    return int(max(args) if kind in ("grid", "choice") else args[1])


def connect(num_cpus: int | None = None) -> str:
    """Join the cluster in RAY_ADDRESS, or start a local one; returns which."""
    import ray

    if ray.is_initialized():
        return "already connected"
    from toolkit.data.sources import DATA_ENV

    if os.environ.get(DATA_ENV):  # trials run in their own folders: a relative data root would miss there
        os.environ[DATA_ENV] = os.path.abspath(os.path.expanduser(os.environ[DATA_ENV]))
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"cluster at {address}"
    # The dashboard also serves the state API that Ray Train uses to clean up after trials.
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
    return "embedded local Ray"


def _check_fits(cfg: SweepConfig) -> None:
    import ray

    r = cfg.sweep.resources
    have = ray.cluster_resources()
    if r.use_tpu:
        return  # TPU slices are resolved by Ray's TPU scheduling (topology, accelerator type)
    need_cpu = r.num_workers * r.cpus_per_worker + DRIVER_CPUS
    need_gpu = r.num_workers * r.gpus_per_worker
    if have.get("CPU", 0) < need_cpu or have.get("GPU", 0) < need_gpu:
        raise ConfigError(
            f"{cfg.source}: one trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs "
            f"(sweep.resources: num_workers={r.num_workers}, cpus_per_worker={r.cpus_per_worker:g}, "
            f"gpus_per_worker={r.gpus_per_worker:g}) but the Ray cluster has {have.get('CPU', 0):g} CPUs and "
            f"{have.get('GPU', 0):g} GPUs; lower those or add nodes")


def build_tuner(cfg: SweepConfig, *, resume: bool) -> tuple[Any, bool]:
    """(Tuner, restored?) for this sweep; restores an interrupted one when asked and possible."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from toolkit.sweep.trial import trial_driver

    s = cfg.sweep
    trainable = tune.with_resources(tune.with_parameters(trial_driver, sweep=cfg), {"CPU": DRIVER_CPUS})
    path = cfg.sweep_dir / "tune"
    if resume and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, restart_errored=True), True
    if s.scheduler.name == "asha":
        scheduler: Any = ASHAScheduler(time_attr="epoch", max_t=max_epochs(cfg), grace_period=s.scheduler.grace_period,
                                       reduction_factor=s.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(s.space),
        tune_config=tune.TuneConfig(
            metric=s.scheduler.metric, mode=s.scheduler.mode, num_samples=s.num_samples,
            scheduler=scheduler,
            # Tune ignores TuneConfig.max_concurrent_trials once a searcher is given; the
            # generator's own limit is the one that holds (0: no limit).
            search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent_trials),
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(name="tune", storage_path=str(cfg.sweep_dir),
                                  failure_config=tune.FailureConfig(max_failures=s.max_failures), verbose=1),
    )
    return tuner, False


def run_sweep(cfg: SweepConfig, *, resume: bool = False, num_cpus: int | None = None) -> dict[str, Any]:
    """Run (or continue) the sweep; returns the results summary (also written to disk).

    One driver per sweep dir: a second one stops at once with the holder's pid and host
    (`toolkit.run_lock`), instead of two Tune runs rewriting one experiment."""
    from toolkit.run_lock import DirLock

    with DirLock(cfg.sweep_dir, what="sweep dir", instead="Wait for that sweep to finish (or continue it later "
                 "with resume=true), or choose another name="):
        return _run_sweep(cfg, resume=resume, num_cpus=num_cpus)


def _run_sweep(cfg: SweepConfig, *, resume: bool, num_cpus: int | None) -> dict[str, Any]:
    import sys

    from toolkit.io_utils import write_text
    from toolkit.sweep.results import export_best, trial_rows, write_results

    import yaml

    cfg.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text(cfg.sweep_dir / "sweep.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    where = connect(num_cpus)
    _check_fits(cfg)
    tuner, restored = build_tuner(cfg, resume=resume)
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    rows, curves = trial_rows(grid, cfg.sweep_dir)
    s = cfg.sweep.scheduler
    summary = write_results(cfg.sweep_dir, rows, curves, list(cfg.sweep.space), s.metric, s.mode,
                            {"sweep": cfg.name, "wall_seconds": wall, "ray": where, "restored": restored,
                             "driver_imported_jax": "jax" in sys.modules})
    if cfg.sweep.export_best:
        best = export_best(cfg.sweep_dir, summary["best"])
        summary["best_exported_to"] = str(best) if best else None
    return summary
