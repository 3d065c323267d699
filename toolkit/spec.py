"""`ClassifierSpec`: what a classifier is before it trains, held whole.

The same facts (classes, prompt, adapters, optimisation, mesh, the base model and how
it is stored) reach a classifier three ways: a run config, the Python API's keyword
arguments, and a saved `classifier.json`. The spec is built from the run config's own
sections, so each of those facts, its default and its check is written once, in
`toolkit.config`. A saved classifier is then read as strictly as a config. A run's
`config.yaml` and its classifier's spec can also be compared key by key.

The operating point is not part of the spec. It is chosen on held-out rows after
fitting (`tune_threshold`) and saved beside the spec.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Sequence

from toolkit.config import (ClassifierSection, MeshConfig, ModelSection, TrainConfig, _plain, from_dict, must)
from toolkit.models.lora_config import LoRAConfig

# `model.name` of a base given in memory as a (Gemma, Tokenizer) pair; it is saved as
# base.npz beside classifier.json.
IN_MEMORY = "(in memory)"
# `model.name` in an export's classifier.json: the base is the keras-hub preset or
# transformers files in that same directory.
MODEL_HERE = "."
# The registry: `classifier.task` -> the class that holds such a classifier, by import
# path, so no classifier module imports another to find its kind.
CLASSES = {"single_label": "toolkit.classifier:AgileClassifier",
           "multilabel": "toolkit.multilabel:MultiLabelClassifier"}


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """A classifier's definition: the run config's `classifier`, `model`, `lora`,
    `train` and `mesh` sections (`classifier.threshold` unset, see above)."""

    classifier: ClassifierSection
    model: ModelSection = ModelSection()
    lora: LoRAConfig = LoRAConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()

    def __post_init__(self) -> None:
        must(self.classifier.threshold is None, "classifier.threshold", self.classifier.threshold,
             "unset in a classifier's spec: the operating point is chosen after fitting (tune_threshold)")

    @classmethod
    def from_config(cls, cfg: Any, categories: Sequence[str] | None = None) -> "ClassifierSpec":
        """The spec of the classifier a run config (`toolkit.config.RunConfig`) trains.
        `categories` are the data's own, for a multi-label run whose config leaves
        `classifier.categories` unset."""
        c = dataclasses.replace(cfg.classifier, threshold=None)
        if c.task == "multilabel" and c.categories is None and categories is not None:
            c = dataclasses.replace(c, categories=tuple(categories))
        return cls(classifier=c, model=cfg.model, lora=cfg.lora, train=cfg.train, mesh=cfg.mesh)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str, key: str = "") -> "ClassifierSpec":
        """Strictly, like a config file: an unknown or ill-typed key is a ConfigError naming it."""
        return from_dict(cls, d, where, key)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @property
    def task(self) -> str:
        return self.classifier.task


def classifier_class(task: str) -> type:
    """The class that holds a classifier of `task` (`CLASSES`)."""
    module, name = CLASSES[task].split(":")
    return getattr(importlib.import_module(module), name)
