"""Run configuration: dataclasses, loaded from YAML with `key=value` overrides.

Each field is defined once, here or in the dataclass that owns it
(`LoRAConfig`, `PromptFormat`); YAML files only choose values. Unknown keys
are errors that name the file and list the known keys, because a silently
ignored typo (`lora.rnak: 16`) is the worst kind of sweep bug.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from toolkit.data.prompt import PromptFormat
from toolkit.models.lora_config import LoRAConfig


# "none": keep every activation; "dots" (the default): keep the projections' matmul
# outputs and recompute the cheap elementwise rest, which on a 2-core CPU made the 270M
# train step ~22% faster than "none" (fewer per-layer buffers to stack and copy) and
# uses less memory; "full": recompute each decoder layer in the backward pass (least memory).
REMAT_POLICIES = ("none", "dots", "full")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which pretrained model, and how its frozen base is stored.

    `param_dtype` stores the frozen base, `dtype` is the compute (activation)
    dtype. `auto` for either is bfloat16 on GPU/TPU and float32 on CPU, where
    bf16 matmuls are emulated and slower than fp32. LoRA weights, norms,
    softmaxes and losses stay fp32 whatever is chosen.
    """

    name: str = "gemma3_270m"
    param_dtype: str = "auto"
    dtype: str = "auto"
    remat: str = "dots"

    def __post_init__(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where rows come from. `source`: `ethos`, `ethos_multilabel`, a CSV/TSV/JSONL/Parquet
    path, or `tfds:NAME`. Built-in and TFDS sources have their own test split;
    a file source uses `test_path` or holds out `test_fraction`.
    `label_names` maps raw label values to class names (e.g. ETHOS 0/1).

    Every split is a seeded shuffle (`split_seed`), stratified by label for file and
    TFDS sources: the test part (`test_fraction`, files without `test_path`), then
    the validation rows (`validation_size`, the END of the shuffled train part),
    then `train_size` (its first rows, so smaller subsets nest in larger ones).
    ETHOS keeps the codelab's own seeded split and order, so its subsets are the
    codelab's. Validation rows score each epoch, rank the best checkpoint and drive
    ASHA; with `validation_size: 0` there is no per-epoch eval (the test rows never
    choose a model)."""

    source: str = "ethos"
    text_column: str = "text"
    label_column: str = "label"
    delimiter: str | None = None
    local_dir: str | None = None
    cache_dir: str | None = None
    test_path: str | None = None
    test_fraction: float = 0.2
    train_size: int | None = None
    validation_size: int = 0
    label_names: dict[str, str] | None = None
    split_seed: int = 0


@dataclasses.dataclass(frozen=True)
class ClassifierSection:
    """The classes, the single token standing for each (`verbalizers`), and the prompt."""

    labels: tuple[str, ...] = ("no", "yes")
    verbalizers: dict[str, str] | None = None
    prompt: PromptFormat = PromptFormat()
    max_length: int = 256


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation. `batch_size` is global (all hosts); `loss` is "class" (softmax over
    the class tokens) or "lm" (the codelab's full-vocabulary loss)."""

    epochs: int = 3  # the default recipe (bench/recipe_search.py): 3 epochs at 5e-4
    batch_size: int = 8
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.1
    schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    loss: str = "class"
    seed: int = 0
    eval_batch_size: int = 16
    eval_every_epoch: bool = True
    grad_accum_steps: int = 1
    log_every_steps: int = 10
    peak_tflops: float | None = None
    # Pack several examples per row to a fixed token budget (one compiled shape, little
    # padding; `batch_size` is then the mean examples per step). False: length buckets.
    packing: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("class", "lm"):
            raise ValueError(f"train.loss must be 'class' or 'lm', got {self.loss!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"train.schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.batch_size % max(self.grad_accum_steps, 1):
            raise ValueError(f"train.batch_size={self.batch_size} must divide by "
                             f"train.grad_accum_steps={self.grad_accum_steps}")
        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum_steps", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    """Orbax checkpoints under `<run_dir>/checkpoints`: the last `keep`, plus the best
    by `best_metric` (an eval metric, `best_mode` max or min). `every_steps: 0` saves
    at epoch ends only; a run killed between saves loses at most that many steps."""

    enabled: bool = True
    every_steps: int = 0
    keep: int = 2
    best_metric: str = "eval_roc_auc"
    best_mode: str = "max"

    def __post_init__(self) -> None:
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"checkpoint.best_mode must be max or min, got {self.best_mode!r}")
        if self.keep < 1 or self.every_steps < 0:
            raise ValueError("checkpoint.keep must be >= 1 and checkpoint.every_steps >= 0")


@dataclasses.dataclass(frozen=True)
class TrackingSection:
    """Weights & Biases. `mode: auto` is online when an API key is configured
    (WANDB_API_KEY or `wandb login`), offline otherwise; `disabled` turns it off.
    Offline runs land in `<run_dir>/wandb` and upload later with `wandb sync`."""

    mode: str = "auto"
    project: str = "agile-toolkit"
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"tracking.mode must be auto, online, offline or disabled, got {self.mode!r}")


@dataclasses.dataclass(frozen=True)
class DistributedSection:
    """Multi-host start-up. With no coordinator, `jax.distributed.initialize()` is called
    only where the platform describes the job (TPU pods, SLURM, env vars
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); a single host skips it."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes: an int, or "auto" for whatever devices are left.

    The default is pure data parallelism over every device. `fsdp` splits the
    frozen weights' embed axis (memory), `tensor` their heads / mlp / vocab
    axes (memory and compute per device); batches split over data x fsdp.
    """

    data: Any = "auto"
    fsdp: Any = 1
    tensor: Any = 1

    def __post_init__(self) -> None:
        for name in MESH_AXES:
            v = getattr(self, name)
            if v != "auto" and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"mesh.{name} must be a positive int or 'auto', got {v!r}")

    def sizes(self, device_count: int) -> tuple[int, int, int]:
        """Resolve "auto" so the product is `device_count`; the first "auto" axis takes the rest."""
        fixed = math.prod(getattr(self, a) for a in MESH_AXES if getattr(self, a) != "auto")
        autos = [a for a in MESH_AXES if getattr(self, a) == "auto"]
        if device_count % fixed:
            raise ValueError(f"mesh {self.describe()} needs a multiple of {fixed} devices, "
                             f"but there are {device_count}; change mesh.data/fsdp/tensor")
        out = {a: getattr(self, a) for a in MESH_AXES}
        for i, a in enumerate(autos):
            out[a] = device_count // fixed if i == 0 else 1
        if not autos and fixed != device_count:
            raise ValueError(f"mesh {self.describe()} uses {fixed} devices but there are {device_count}; "
                             "set one axis to 'auto' or make the sizes multiply to the device count")
        return tuple(out[a] for a in MESH_AXES)  # type: ignore[return-value]

    def describe(self) -> str:
        return "x".join(f"{a}={getattr(self, a)}" for a in MESH_AXES)


MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    model: ModelSection = ModelSection()
    lora: LoRAConfig = LoRAConfig()
    data: DataSection = DataSection()
    classifier: ClassifierSection = ClassifierSection()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointSection = CheckpointSection()
    tracking: TrackingSection = TrackingSection()
    distributed: DistributedSection = DistributedSection()
    resume: bool = False

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and key."""


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        return tuple(_coerce(typing.get_args(tp)[0], v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a string, got {value!r}: YAML reads unquoted yes/no/on/off "
                          "as booleans; quote it, e.g. \"no\"")
    if tp in (int, float, bool, str) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, d: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {names}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def set_dotted(d: dict[str, Any], key: str, value: Any, where: str = "config") -> None:
    """d["a"]["b"] = value for key "a.b", creating the mappings on the way."""
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {key} goes through a non-mapping value")
    node[parts[-1]] = value


def apply_overrides(d: dict[str, Any], overrides: Sequence[str], where: str = "overrides") -> dict[str, Any]:
    """`a.b=value` sets d["a"]["b"]; the value is parsed as YAML (numbers, lists, null)."""
    out = _plain(d)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: {item!r} is not key=value")
        key, raw = item.split("=", 1)
        set_dotted(out, key.strip(), yaml.safe_load(raw) if raw.strip() else None, where)
    return out


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML mapping from `path`; a missing file, bad YAML or a non-mapping is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return d


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """A RunConfig from a YAML file (or defaults) plus `key=value` overrides."""
    d: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        d = read_yaml(path, "config file")
    d = apply_overrides(d, overrides, where=f"{where} overrides")
    return from_dict(RunConfig, d, where)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
