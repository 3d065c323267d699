"""Run configuration: dataclasses, loaded from YAML with `key=value` overrides.

Each field is defined once, here or in the dataclass that owns it
(`LoRAConfig`, `PromptFormat`); YAML files only choose values. Unknown keys
are errors that name the file and list the known keys, because a silently
ignored typo (`lora.rnak: 16`) is the worst kind of sweep bug.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from toolkit.data.prompt import PromptFormat
from toolkit.models.lora import LoRAConfig


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which pretrained model, and how its frozen base is stored.

    `param_dtype: auto` is bfloat16 on GPU/TPU and float32 on CPU, where bf16
    matmuls are emulated and slower than fp32.
    """

    name: str = "gemma3_270m"
    param_dtype: str = "auto"
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where rows come from. `source`: `ethos`, `ethos_multilabel`, a CSV/TSV/JSONL/Parquet
    path, or `tfds:NAME`. Built-in and TFDS sources have their own test split;
    a file source uses `test_path` or holds out `test_fraction`.
    `label_names` maps raw label values to class names (e.g. ETHOS 0/1)."""

    source: str = "ethos"
    text_column: str = "text"
    label_column: str = "label"
    delimiter: str | None = None
    local_dir: str | None = None
    cache_dir: str | None = None
    test_path: str | None = None
    test_fraction: float = 0.2
    train_size: int | None = None
    label_names: dict[str, str] | None = None


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

    epochs: int = 4
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    loss: str = "class"
    seed: int = 0
    eval_batch_size: int = 16
    eval_every_epoch: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("class", "lm"):
            raise ValueError(f"train.loss must be 'class' or 'lm', got {self.loss!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"train.schedule must be cosine, linear or constant, got {self.schedule!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    model: ModelSection = ModelSection()
    lora: LoRAConfig = LoRAConfig()
    data: DataSection = DataSection()
    classifier: ClassifierSection = ClassifierSection()
    train: TrainConfig = TrainConfig()

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


def apply_overrides(d: dict[str, Any], overrides: Sequence[str], where: str = "overrides") -> dict[str, Any]:
    """`a.b=value` sets d["a"]["b"]; the value is parsed as YAML (numbers, lists, null)."""
    out = _plain(d)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: {item!r} is not key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key} goes through a non-mapping value")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """A RunConfig from a YAML file (or defaults) plus `key=value` overrides."""
    d: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    d = apply_overrides(d, overrides, where=f"{where} overrides")
    return from_dict(RunConfig, d, where)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
