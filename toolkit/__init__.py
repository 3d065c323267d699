"""agile-toolkit: few-shot text classifiers from Gemma with LoRA, in JAX/Flax.

The public names resolve lazily so that `import toolkit` (and Ray drivers that
import `toolkit.sweep`) never import JAX: on a TPU host, importing JAX in the
driver takes the accelerator lock the training workers need.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AgileClassifier": "toolkit.classifier",
    "PromptFormat": "toolkit.data.prompt",
    "TrainConfig": "toolkit.config",
    "load_config": "toolkit.config",
    "ModelConfig": "toolkit.models.configs",
    "get_config": "toolkit.models.configs",
    "named_configs": "toolkit.models.configs",
    "Gemma": "toolkit.models.gemma",
    "LoRAConfig": "toolkit.models.lora",
    "Tokenizer": "toolkit.models.tokenizer",
    "load_pretrained": "toolkit.weights.loader",
    "predict_file": "toolkit.predict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
