"""Run configuration: dataclasses, loaded from YAML with `key=value` overrides.

Each field is defined once, here or in the dataclass that owns it
(`LoRAConfig`, `PromptFormat`); YAML files only choose values. Unknown keys
are errors that name the file and list the known keys, because a silently
ignored typo (`lora.rnak: 16`) is the worst kind of sweep bug.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from toolkit.data.prompt import PromptFormat
from toolkit.models.configs import REMAT_POLICIES, STORAGE_DTYPES, Runtime
from toolkit.models.lora_config import LoRAConfig


DTYPES = ("auto", *STORAGE_DTYPES)
# "class": softmax over the class tokens; "lm": the codelab's full-vocabulary loss.
LOSSES = ("class", "lm")
# What a run's epochs are scored by (`AgileClassifier.fit` prefixes the validation
# metrics with "eval_"): the names `checkpoint.best_metric` may take.
EVAL_METRICS = ("eval_roc_auc", "eval_pr_auc", "eval_f1", "eval_f1_macro", "eval_f1_micro", "eval_accuracy",
                "eval_balanced_accuracy", "eval_roc_auc_macro", "eval_pr_auc_macro")
TASKS = ("single_label", "multilabel")
TRAINABLE = ("lora", "head", "full")


def must(ok: bool, key: str, value: Any, rule: str) -> None:
    """The one message format of a value out of range: `section.key: got V; must be RULE`.

    Raised as ValueError from the dataclasses (so the API, which builds them from
    keyword arguments, gets it too); `from_dict` adds the file or command line."""
    if not ok:
        raise ValueError(f"{key}: got {value!r}; must be {rule}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
    # none | int8 | int4: the frozen base stored quantized, dequantized in each matmul (QLoRA).
    base_quant: str = "none"

    def __post_init__(self) -> None:
        must(isinstance(self.name, str) and bool(self.name.strip()), "model.name", self.name,
             "a model spec such as gemma3_270m, a .gguf file, a keras-hub preset dir or random:tiny_gemma3")
        must(self.remat in REMAT_POLICIES, "model.remat", self.remat, f"one of {', '.join(REMAT_POLICIES)}")
        from toolkit.models.quant import MODES as QUANT_MODES  # noqa: N811

        must(self.base_quant in QUANT_MODES, "model.base_quant", self.base_quant,
             f"{', '.join(QUANT_MODES[:-1])} or {QUANT_MODES[-1]} (the frozen base's storage; adapters stay fp32)")
        for key in ("param_dtype", "dtype"):
            must(getattr(self, key) in DTYPES, f"model.{key}", getattr(self, key), f"one of {', '.join(DTYPES)}")

    def runtime(self) -> Runtime:
        """How the model runs on this machine (`auto` dtypes resolved for its backend)."""
        return Runtime(param_dtype=resolve_dtype(self.param_dtype), dtype=resolve_dtype(self.dtype),
                       remat=self.remat, base_quant=self.base_quant)


def resolve_dtype(dtype: str) -> str:
    """`auto` (for storage or compute dtype): bfloat16 where matmuls are native (GPU/TPU),
    float32 on CPU, where bf16 matmuls are emulated and slower."""
    if dtype != "auto":
        return dtype
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where rows come from. `source`: `ethos`, `ethos_multilabel`, a CSV/TSV/JSONL/Parquet
    path, or `tfds:NAME`. Built-in and TFDS sources have their own test split;
    a file source uses `test_path` or holds out `test_fraction`.
    `label_names` maps raw label values to class names (e.g. ETHOS 0/1).
    Multi-label files (`classifier.task: multilabel`) name their labels either as
    `label_columns` (one 0/1 column per category) or as `label_column` with
    `label_delimiter` (a cell such as "race|gender"; empty: none).

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
    label_columns: tuple[str, ...] | None = None
    label_delimiter: str | None = None

    def __post_init__(self) -> None:
        must(bool(self.source and self.source.strip()), "data.source", self.source,
             "ethos, ethos_multilabel, tfds:NAME or a CSV/TSV/JSONL/Parquet path")
        must(_number(self.test_fraction) and 0 < self.test_fraction < 1, "data.test_fraction", self.test_fraction,
             "between 0 and 1 (exclusive), e.g. 0.2")
        must(self.train_size is None or self.train_size >= 1, "data.train_size", self.train_size,
             "a positive number of rows, or null for all")
        must(self.validation_size >= 0, "data.validation_size", self.validation_size, ">= 0 (0: no validation rows)")
        must(self.text_column != self.label_column, "data.label_column", self.label_column,
             f"a different column from data.text_column ({self.text_column!r})")
        must(self.delimiter is None or len(self.delimiter) == 1, "data.delimiter", self.delimiter,
             "one character such as ',' ';' or a tab, or null for the file type's own")
        must(self.label_columns is None or (len(self.label_columns) >= 1 and len(set(self.label_columns)) ==
             len(self.label_columns) and self.text_column not in self.label_columns), "data.label_columns",
             self.label_columns, "distinct category column names, not the text column, e.g. [violence, race]")
        must(self.label_delimiter is None or (bool(self.label_delimiter) and self.label_columns is None),
             "data.label_delimiter", self.label_delimiter,
             "a separator such as '|' for data.label_column's cells, and data.label_columns unset")

    @property
    def multilabel(self) -> bool:
        """Rows carry a set of categories rather than one class."""
        return self.source == "ethos_multilabel" or self.label_columns is not None or self.label_delimiter is not None


@dataclasses.dataclass(frozen=True)
class ThresholdSection:
    """The operating point a run chooses on its validation rows (exactly one target):
    `target_precision` (the most recall at that precision), `target_recall` (the most
    precision at that recall) or `metric: f1`. Binary classifiers, or each category of a
    multi-label one (a category whose validation rows cannot meet the target keeps 0.5)."""

    target_precision: float | None = None
    target_recall: float | None = None
    metric: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("target_precision", "target_recall", "metric") if getattr(self, k) is not None]
        must(len(given) == 1, "classifier.threshold", dataclasses.asdict(self),
             "exactly one of target_precision, target_recall or metric, e.g. {target_precision: 0.9}")
        for key in ("target_precision", "target_recall"):
            value = getattr(self, key)
            must(value is None or (_number(value) and 0 < value <= 1), f"classifier.threshold.{key}", value,
                 "a number in (0, 1], e.g. 0.9")
        must(self.metric in (None, "f1"), "classifier.threshold.metric", self.metric, "f1")


@dataclasses.dataclass(frozen=True)
class ClassifierSection:
    """The classes, the single token standing for each (`verbalizers`), the prompt, and
    optionally the operating point to choose on the validation rows (`threshold`)."""

    labels: tuple[str, ...] = ("no", "yes")
    verbalizers: dict[str, str] | None = None
    prompt: PromptFormat = PromptFormat()
    max_length: int = 256
    threshold: ThresholdSection | None = None
    # "multilabel": one yes/no question per category (`question`, with {category}),
    # answered with `labels` (no, yes); `categories` default to the data's own.
    task: str = "single_label"
    categories: tuple[str, ...] | None = None
    question: str = "Is the following text about {category}"

    def __post_init__(self) -> None:
        labels = [str(v) for v in self.labels]
        must(len(labels) >= 2 and len(set(labels)) == len(labels) and all(v.strip() for v in labels),
             "classifier.labels", list(self.labels), "at least two distinct, non-empty class names")
        unknown = sorted(set(self.verbalizers or {}) - set(labels))
        must(not unknown, "classifier.verbalizers", self.verbalizers,
             f"keyed by class names of classifier.labels {labels} (unknown: {unknown})")
        must(self.max_length >= 8, "classifier.max_length", self.max_length,
             ">= 8 tokens (and long enough for the prompt plus some text)")
        must(self.task in TASKS, "classifier.task", self.task, f"one of {', '.join(TASKS)}")
        must(self.task == "multilabel" or self.categories is None, "classifier.categories", self.categories,
             "unset unless classifier.task is multilabel")
        must(self.categories is None or (len(self.categories) >= 1 and len(set(self.categories)) ==
             len(self.categories)), "classifier.categories", self.categories, "distinct category names")
        must("{category}" in self.question, "classifier.question", self.question,
             "a question containing {category}, e.g. 'Is the following text about {category}'")


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when `metric` (an `eval_*` value scored each epoch on the eval / validation
    rows) has not improved by more than `min_delta` for `patience` epochs; the fit then
    keeps the best epoch's adapters, and its history says which and why."""

    metric: str = "eval_roc_auc"
    mode: str = "max"
    patience: int = 1
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        must(self.metric in EVAL_METRICS, "train.early_stopping.metric", self.metric,
             f"a metric scored each epoch: one of {', '.join(EVAL_METRICS)}")
        must(self.mode in ("max", "min"), "train.early_stopping.mode", self.mode, "max or min")
        must(self.patience >= 1, "train.early_stopping.patience", self.patience, ">= 1 epoch")
        must(_number(self.min_delta) and self.min_delta >= 0, "train.early_stopping.min_delta", self.min_delta,
             ">= 0")


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
    # Stop on the eval metric and keep the best epoch's adapters (needs eval rows).
    early_stopping: EarlyStopping | None = None
    # What trains: "lora" (adapters on the frozen base), "head" (a linear head on the
    # frozen model's last-token features, starting as the zero-shot classifier), or
    # "full" (every weight, with AdamW state for all of them: see launch/plan.py's bill).
    trainable: str = "lora"

    def __post_init__(self) -> None:
        if isinstance(self.early_stopping, dict):  # TrainConfig(**dict) from the Python API
            object.__setattr__(self, "early_stopping", EarlyStopping(**self.early_stopping))
        must(self.loss in LOSSES, "train.loss", self.loss, " or ".join(LOSSES))
        must(self.trainable in TRAINABLE, "train.trainable", self.trainable, " or ".join(TRAINABLE))
        must(self.trainable != "head" or self.early_stopping is None, "train.early_stopping",
             self.early_stopping, "unset with train.trainable=head (its epochs take seconds)")
        must(self.schedule in ("cosine", "linear", "constant"), "train.schedule", self.schedule,
             "cosine, linear or constant")
        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum_steps", "log_every_steps"):
            must(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), ">= 1")
        must(self.batch_size % self.grad_accum_steps == 0, "train.batch_size", self.batch_size,
             f"a multiple of train.grad_accum_steps ({self.grad_accum_steps})")
        must(_number(self.learning_rate) and self.learning_rate > 0, "train.learning_rate", self.learning_rate,
             "> 0, e.g. 5e-4")
        must(_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio,
             "in [0, 1): the share of steps spent warming up")
        must(_number(self.weight_decay) and self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        must(_number(self.grad_clip) and self.grad_clip > 0, "train.grad_clip", self.grad_clip,
             "> 0 (the global gradient norm cap, e.g. 1.0)")
        must(self.peak_tflops is None or (_number(self.peak_tflops) and self.peak_tflops > 0), "train.peak_tflops",
             self.peak_tflops, "> 0, or null to look it up")


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
        must(self.best_mode in ("max", "min"), "checkpoint.best_mode", self.best_mode, "max or min")
        must(self.keep >= 1, "checkpoint.keep", self.keep, ">= 1")
        must(self.every_steps >= 0, "checkpoint.every_steps", self.every_steps, ">= 0 (0: at epoch ends only)")
        must(bool(self.best_metric), "checkpoint.best_metric", self.best_metric, f"one of {', '.join(EVAL_METRICS)}")


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
        must(self.mode in ("auto", "online", "offline", "disabled"), "tracking.mode", self.mode,
             "auto, online, offline or disabled")


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
            must(v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), f"mesh.{name}", v,
                 "a positive int or auto")

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
    # Replace an existing run dir: the old one is moved aside and deleted once the new
    # run has saved its first checkpoint (a failure before that puts it back). Local run
    # dirs only: an object store cannot move a folder aside.
    overwrite: bool = False
    # A saved classifier (or a run / sweep dir holding one) whose trained adapters this run
    # starts from instead of fresh ones: the agile loop's next round on the grown labelled
    # file (`agile-train --continue DIR`). Labels, model, LoRA and train.trainable must match.
    warm_start: str | None = None
    # Extra training callbacks, as `module:Name` import paths; each is called with this
    # config and returns a `toolkit.train.callbacks.Callback` (custom logging, debugging).
    callbacks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name = self.name
        must(bool(name.strip()) and name not in (".", "..") and "/" not in name and "\\" not in name, "name", name,
             "a plain directory name (no slashes): the run dir is <output_dir>/<name>")
        must(bool(self.output_dir.strip()), "output_dir", self.output_dir, "a directory path, e.g. runs")
        from toolkit.storage import is_uri

        must(not is_uri(self.output_dir) or self.output_dir.startswith("gs://") or not self.checkpoint.enabled,
             "output_dir", self.output_dir, "a local path or gs://bucket/...: Orbax writes checkpoints there only "
             "(mount other stores and give the mount's path, or set checkpoint.enabled=false)")
        must(not (self.overwrite and is_uri(self.output_dir)), "overwrite", self.overwrite,
             f"false for an object-store output_dir ({self.output_dir}): a run there cannot be moved aside and put "
             "back on failure; delete the old run yourself (e.g. gcloud storage rm -r) or choose another name=")
        must(not (self.resume and self.overwrite), "overwrite", self.overwrite,
             "false when resume=true (resume continues the run dir, overwrite replaces it: choose one)")
        must(self.warm_start is None or (isinstance(self.warm_start, str) and bool(self.warm_start.strip())),
             "warm_start", self.warm_start, "a saved classifier's directory (or a run or sweep dir holding one)")
        must(self.warm_start is None or self.train.trainable != "head", "warm_start", self.warm_start,
             "unset with train.trainable=head (a head fits afresh in seconds; there are no adapters to continue)")
        must(self.train.trainable != "full" or self.model.base_quant == "none", "model.base_quant",
             self.model.base_quant, "none with train.trainable=full (it trains every weight, so none can be "
             "stored quantized; a quantized base takes lora or head)")
        bad = [c for c in self.callbacks if not re.fullmatch(r"[\w.]+:[\w.]+", c)]
        must(not bad, "callbacks", list(self.callbacks), "import paths module:Name, e.g. my_package.hooks:LogInputs")
        must(self.classifier.threshold is None or len(self.classifier.labels) == 2, "classifier.threshold",
             self.classifier.threshold, "unset for more than two classes (a threshold splits two)")
        must(self.train.early_stopping is None or self.data.validation_size > 0, "train.early_stopping",
             self.train.early_stopping, "set with data.validation_size > 0: it stops on the validation rows' metric")
        must(self.classifier.threshold is None or self.data.validation_size > 0, "classifier.threshold",
             self.classifier.threshold, "set with data.validation_size > 0: it is chosen on validation rows, "
             "never on the test rows")
        multilabel = self.classifier.task == "multilabel"
        must(multilabel == self.data.multilabel, "classifier.task", self.classifier.task,
             "multilabel exactly when the data has category labels (data.source ethos_multilabel, "
             "data.label_columns or data.label_delimiter)" if multilabel else
             f"multilabel for the data given (data.source {self.data.source!r}, label_columns "
             f"{self.data.label_columns}, label_delimiter {self.data.label_delimiter!r})")
        must(self.checkpoint.best_metric in EVAL_METRICS, "checkpoint.best_metric", self.checkpoint.best_metric,
             f"a metric the run scores each epoch: one of {', '.join(EVAL_METRICS)}")

    @property
    def run_location(self) -> str:
        """Where the run lives: `<output_dir>/<name>`, a local path or an object-store URI."""
        from toolkit.storage import join

        return join(self.output_dir, self.name)

    @property
    def run_dir(self) -> Path:
        """The local folder the run writes its files into: the run itself, or, when
        `output_dir` is a URI (`gs://...`), its local mirror, published to the URI
        (`toolkit.storage`)."""
        from toolkit.storage import is_uri, mirror

        return mirror(self.run_location) if is_uri(self.output_dir) else Path(self.output_dir) / self.name

    @property
    def checkpoint_location(self) -> Any:
        """Where Orbax writes: `<run>/checkpoints`, on the URI itself for a URI run."""
        from toolkit.storage import is_uri, join, location

        return location(join(self.run_location, "checkpoints")) if is_uri(self.output_dir) else self.run_dir / "checkpoints"

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file (or the command-line
    override) and the key. `key` is the dotted key at fault, when known; `detail` the
    message without its source, so a caller can say where the value came from."""

    def __init__(self, message: str, *, key: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.key = key
        self.detail = detail if detail is not None else message


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _fail(where: str, key: str, detail: str) -> ConfigError:
    return ConfigError(f"{where}: {detail}", key=key or None, detail=detail)


_QUOTE = "YAML reads unquoted yes/no/on/off as booleans; quote it, e.g. \"no\""
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(tp: Any, value: Any, where: str, key: str = "") -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _fail(where, key, f"{key}: got {value!r}; must be a mapping of {tp.__name__} keys")
        return from_dict(tp, value, where, key)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _fail(where, key, f"{key}: got {value!r}; must be a list")
        return tuple(_coerce(typing.get_args(tp)[0], v, where, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, key, f"{key}: got {value!r}; must be a mapping")
        booleans = [x for kv in value.items() for x in kv if isinstance(x, bool)]
        if booleans:
            raise _fail(where, key, f"{key}: got {value!r}; must map strings to strings: {_QUOTE}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, bool):
        raise _fail(where, key, f"{key}: got {value!r}; must be a string: {_QUOTE}")
    if tp in (int, float, bool, str) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise _fail(where, key, f"{key}: got {value!r}; must be {_KINDS[tp]}")
    return value


def from_dict(cls: type, d: dict[str, Any], where: str = "config", key: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys by name.

    `where` is the source (a file, "command line"), `key` the dotted path of `d`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    at = f"{key}: " if key else ""
    if unknown:
        raise _fail(where, f"{key}.{unknown[0]}".lstrip("."), f"{at}unknown key(s) {unknown}; known keys: {names}")
    kwargs = {k: _coerce(hints[k], v, where, f"{key}.{k}".lstrip(".")) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        detail = str(e)
        m = re.match(r"([\w.]+): got ", detail)
        if m and "." in key and m.group(1).split(".")[0] == key.rpartition(".")[2]:
            # A section's own message names it as a run config does ("model.remat"); here the
            # section sits elsewhere ("spec.model"): name the key where it is.
            detail = f"{key.rpartition('.')[0]}.{detail}"
            m = re.match(r"([\w.]+): got ", detail)
        raise _fail(where, m.group(1) if m else key, detail if m or not key else f"{key}: {detail}") from None


def set_dotted(d: dict[str, Any], key: str, value: Any, where: str = "config") -> None:
    """d["a"]["b"] = value for key "a.b", creating the mappings on the way."""
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {key} goes through a non-mapping value")
    node[parts[-1]] = value


def apply_overrides(d: dict[str, Any], overrides: Sequence[str], where: str = "command line") -> dict[str, Any]:
    """`a.b=value` sets d["a"]["b"]; the value is parsed as YAML (numbers, lists, null)."""
    out = _plain(d)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: {item!r} is not key=value (e.g. train.epochs=2)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. an unbalanced bracket): the string itself, checked as any value
        set_dotted(out, key.strip(), value, f"{where} override {item!r}")
    return out


def blame_override(e: ConfigError, overrides: Sequence[str]) -> ConfigError:
    """`e` again, said of the command-line override that set its key (when one did), not of the file."""
    if not e.key:
        return e
    for item in reversed(overrides):
        k = item.split("=", 1)[0].strip()
        # A section-level message (e.g. LoRAConfig's own) names the section: blame the
        # override inside it whose leaf key the message mentions.
        inside = k.startswith(e.key + ".") and k.rsplit(".", 1)[-1] in e.detail
        if e.key == k or e.key.startswith(k + ".") or inside:
            return ConfigError(f"command-line override {item!r}: {e.detail}", key=e.key, detail=e.detail)
    return e


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
    d = apply_overrides(d, overrides)
    try:
        return from_dict(RunConfig, d, where)
    except ConfigError as e:
        raise blame_override(e, overrides) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
