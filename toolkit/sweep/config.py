"""A sweep file: a run config (the same keys as `launch/train.py` reads) plus a
`sweep:` section saying what to vary, how to schedule trials and what each
trial may use. JAX-free and Ray-free, so the driver can read it anywhere.

    name: quickstart
    model: {name: gemma3_270m}
    ...                                    # every RunConfig section, as for one run
    sweep:
      space:                               # dotted RunConfig key -> one distribution
        train.learning_rate: {loguniform: [3.0e-4, 3.0e-3]}
        lora.rank: {choice: [4, 8, 16]}
        model.name: {grid: [gemma_2b, gemma_7b]}
      num_samples: 2                       # draws per grid point
      scheduler: {name: asha, metric: eval_f1, mode: max}
      resources: {num_workers: 1, cpus_per_worker: 2}
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any, Sequence

from toolkit.config import ConfigError, RunConfig, apply_overrides, from_dict, read_yaml, set_dotted

# name -> what its argument list holds; one place for the space syntax.
DISTRIBUTIONS: dict[str, str] = {
    "grid": "a list of values, each tried (crossed with the other grid keys)",
    "choice": "a list of values, one drawn per sample",
    "uniform": "[low, high]",
    "loguniform": "[low, high], both > 0",
    "randint": "[low, high) integers",
    "lograndint": "[low, high) integers, both > 0",
}


@dataclasses.dataclass(frozen=True)
class SchedulerSection:
    """Early stopping. `asha` stops a trial whose `metric` at an epoch is in the bottom
    1/`reduction_factor` of the trials that reached that epoch (after `grace_period`
    epochs); `fifo` runs every trial to the end. `metric` is any per-epoch value a
    trial reports: eval_f1, eval_roc_auc, eval_pr_auc, eval_balanced_accuracy, train_loss."""

    name: str = "asha"
    metric: str = "eval_f1"
    mode: str = "max"
    grace_period: int = 1
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        if self.name not in ("asha", "fifo"):
            raise ValueError(f"sweep.scheduler.name must be asha or fifo, got {self.name!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"sweep.scheduler.mode must be max or min, got {self.mode!r}")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ValueError("sweep.scheduler.grace_period must be >= 1 and reduction_factor >= 2")


@dataclasses.dataclass(frozen=True)
class ResourcesSection:
    """What one trial uses. `num_workers` is the number of JAX processes (one per host:
    a TPU slice's host count, or GPU hosts); each gets `cpus_per_worker` CPUs and
    `gpus_per_worker` GPUs, or with `tpu_topology` a TPU slice (e.g. accelerator_type
    TPU-V6E, topology 4x4, 4 chips per host -> num_workers 4)."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    tpu_topology: str | None = None
    tpu_accelerator_type: str | None = None
    tpus_per_worker: int = 4
    placement_strategy: str = "PACK"

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"sweep.resources.num_workers must be >= 1, got {self.num_workers}")
        if (self.tpu_topology is None) != (self.tpu_accelerator_type is None):
            raise ValueError("sweep.resources.tpu_topology and tpu_accelerator_type go together "
                             "(e.g. 4x4 and TPU-V6E)")

    @property
    def use_tpu(self) -> bool:
        return self.tpu_topology is not None


@dataclasses.dataclass(frozen=True)
class SweepSection:
    """The search: `space` (dotted run-config key -> {distribution: args}), `num_samples`
    draws of it, at most `max_concurrent_trials` at once (0: as many as fit), each
    retried `max_failures` times from its last checkpoint. `export_best` copies the
    best trial's classifier to `<sweep dir>/best`."""

    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_samples: int = 1
    max_concurrent_trials: int = 1
    max_failures: int = 2
    seed: int = 0
    scheduler: SchedulerSection = SchedulerSection()
    resources: ResourcesSection = ResourcesSection()
    export_best: bool = False
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_concurrent_trials < 0 or self.max_failures < 0:
            raise ValueError("sweep.num_samples must be >= 1, max_concurrent_trials >= 0, max_failures >= 0")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """The base run (every trial starts from it) and the sweep around it."""

    run: RunConfig
    sweep: SweepSection
    source: str = "defaults"

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def sweep_dir(self) -> Path:
        return self.run.run_dir.absolute()

    def to_dict(self) -> dict[str, Any]:
        return {**self.run.to_dict(), "sweep": dataclasses.asdict(self.sweep)}

    def trial_run(self, params: dict[str, Any], trial_name: str) -> RunConfig:
        """The run config of one trial: the base, `params` (dotted keys) applied, its
        own run directory under the sweep's `trials/`, and W&B grouped by sweep."""
        d = self.run.to_dict()
        for key, value in params.items():
            set_dotted(d, key, value)
        d["name"] = trial_name
        d["output_dir"] = str(self.sweep_dir / "trials")
        d["resume"] = False  # `resume` continues the sweep; a trial resumes from Ray's checkpoint
        d.setdefault("tracking", {})["group"] = self.run.tracking.group or self.name
        return from_dict(RunConfig, d, f"{self.source} (trial {trial_name}: {params})")


def _run_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the run config (what a search space may vary)."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out += _run_keys(type(default), f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def check_space(space: dict[str, Any], base: RunConfig, where: str) -> None:
    """Every key is a run-config field, every entry one known distribution with
    valid arguments, and every listed value builds a valid run config."""
    known = set(_run_keys())
    for key, spec in space.items():
        at = f"{where}: sweep.space.{key}"
        if key not in known:
            close = sorted(k for k in known if k.split(".")[-1] == key.split(".")[-1])
            raise ConfigError(f"{at}: not a run-config key" + (f"; did you mean {close}?" if close else
                              "; keys look like train.learning_rate, lora.rank, data.train_size"))
        if key in ("name", "output_dir", "resume"):
            raise ConfigError(f"{at}: cannot be swept (the sweep sets it per trial)")
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
            raise ConfigError(f"{at}: expected one of " + ", ".join(f"{{{k}: {v}}}" for k, v in DISTRIBUTIONS.items())
                              + f"; got {spec!r}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{at}: {kind} needs a non-empty list ({DISTRIBUTIONS[kind]}), got {args!r}")
        if kind in ("grid", "choice"):
            values = args
        else:
            if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise ConfigError(f"{at}: {kind} needs {DISTRIBUTIONS[kind]}, got {args!r}")
            low, high = args
            if not low < high or (kind.startswith("log") and low <= 0):
                raise ConfigError(f"{at}: {kind} needs {DISTRIBUTIONS[kind]}, got {args!r}")
            values = [low, high] if kind.endswith("uniform") else [int(low), int(high) - 1]
        for v in values:
            if (e := _refusal(base, {key: v}, at)) is not None:
                raise ConfigError(f"{at}: value {v!r} is not valid: {e}")
    _check_grid(space, base, where)


def _refusal(base: RunConfig, params: dict[str, Any], where: str) -> ConfigError | None:
    """Why the run config `base` with `params` (dotted keys) set is not valid, or None."""
    d = base.to_dict()
    for key, value in params.items():
        set_dotted(d, key, value)
    try:
        from_dict(RunConfig, d, where)
    except ConfigError as e:
        return e
    return None


def _check_grid(space: dict[str, Any], base: RunConfig, where: str, limit: int = 512) -> None:
    """Every combination of the listed (grid / choice) values builds a valid run config, so a
    sweep crossing two keys that exclude each other (train.trainable=full with a quantized
    base) is refused before any trial starts rather than failing inside one."""
    listed = {k: next(iter(v.values())) for k, v in space.items() if next(iter(v)) in ("grid", "choice")}
    if len(listed) < 2 or math.prod(len(v) for v in listed.values()) > limit:
        return
    for combo in itertools.product(*listed.values()):
        params = dict(zip(listed, combo))
        if (e := _refusal(base, params, where)) is not None:
            pairs = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"{where}: sweep.space: the trial {pairs} is not valid: {e}")


# Run keys that may name a local file or directory.
PATH_KEYS = ("data.source", "data.local_dir", "data.cache_dir", "data.test_path", "model.name")


def _absolute_paths(d: dict[str, Any]) -> dict[str, Any]:
    """Relative paths that exist here become absolute: trials run in other processes
    (other working directories, other hosts with the same layout), not here."""
    for key in PATH_KEYS:
        section, field = key.split(".")
        value = (d.get(section) or {}).get(field)
        if isinstance(value, str) and value and not Path(value).is_absolute() and Path(value).exists():
            d[section][field] = str(Path(value).absolute())
    return d


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """A sweep file plus `key=value` overrides (run keys, or `sweep.*`)."""
    p = Path(path)
    d = _absolute_paths(apply_overrides(read_yaml(p, "sweep file"), overrides, where=f"{p} overrides"))
    sweep_d = d.pop("sweep", None) or {}
    if not isinstance(sweep_d, dict):
        raise ConfigError(f"{p}: sweep must be a mapping")
    space = sweep_d.pop("space", None) or {}
    if not isinstance(space, dict):
        raise ConfigError(f"{p}: sweep.space must be a mapping of run-config key -> distribution")
    run = from_dict(RunConfig, d, str(p))
    from toolkit.storage import is_uri

    if is_uri(run.output_dir):
        raise ConfigError(f"{p}: output_dir {run.output_dir} is an object-store URI; a sweep's trials and Ray's own "
                          "storage need a filesystem path: mount the bucket (gcsfuse, see BUILD.md) and give its "
                          "path, or give single runs (agile-train) the gs:// output_dir")
    # Trials run elsewhere (Tune gives each its own working directory): fix the
    # sweep's directory here, where the user launched it.
    run = dataclasses.replace(run, output_dir=str(Path(run.output_dir).absolute()))
    section = from_dict(SweepSection, sweep_d, f"{p}: sweep")
    check_space(space, run, str(p))
    if section.scheduler.metric.startswith("eval_") and not run.data.validation_size \
            and "data.validation_size" not in space:
        raise ConfigError(f"{p}: sweep.scheduler.metric {section.scheduler.metric} is scored each epoch on "
                          "validation rows, and data.validation_size is 0 (the test rows never rank trials); "
                          "set data.validation_size (e.g. 100)")
    return SweepConfig(run=run, sweep=dataclasses.replace(section, space=space), source=str(p))
