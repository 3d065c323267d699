"""Our Gemma as keras-hub objects: the causal LM of a preset, and keras-hub's LoRA file.

Keras is pinned to the JAX backend before its first import (it reads the backend
once), so an export can run in the same process as our model.
"""

from __future__ import annotations

import os
import sys

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "jax")

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from toolkit.export.errors import ExportError
from toolkit.models.configs import ModelConfig
from toolkit.weights.errors import WeightImportError

# Our LoRA target names -> the keras-hub layer names `enable_lora(target_layer_names=...)` takes.
KERAS_LAYER_NAMES = {"q": "query", "k": "key", "v": "value", "o": "attention_output",
                     "gate": "ffw_gating", "up": "ffw_gating_2", "down": "ffw_linear"}
# keras-hub layer name -> our projection path inside a decoder layer.
OUR_PROJECTIONS = {"query": "attn.q_proj", "key": "attn.k_proj", "value": "attn.v_proj",
                   "attention_output": "attn.o_proj", "ffw_gating": "mlp.gate_proj",
                   "ffw_gating_2": "mlp.up_proj", "ffw_linear": "mlp.down_proj"}


def backbone_spec(config: ModelConfig) -> dict[str, Any]:
    """keras-hub's `{"class_name", "config"}` for `config`, or an ExportError naming what it cannot hold."""
    from toolkit.weights.keras_preset import keras_backbone_config

    if config.family == "gemma4":
        from toolkit.weights.keras_gemma4 import BACKBONE, backbone_kwargs

        return {"class_name": BACKBONE, "config": backbone_kwargs(config)}
    try:
        return keras_backbone_config(config)
    except WeightImportError as e:
        raise ExportError(f"model {config.name!r} ({config.family}) cannot be written as a keras-hub preset: {e}. "
                          "Export --format lora keeps the adapters without converting the base") from e


def causal_lm(config: ModelConfig, params: Mapping[str, np.ndarray], tokenizer_proto: bytes, *,
              sequence_length: int, dtype: str = "float32"):
    """A keras-hub Gemma / Gemma 3 / Gemma 4 CausalLM holding `params`, with our tokenizer and prompt length."""
    from toolkit.quiet import import_quietly
    from toolkit.weights.keras_preset import set_backbone_weights

    keras_hub = import_quietly("keras_hub")

    spec = backbone_spec(config)
    backbone = getattr(keras_hub.models, spec["class_name"])(**spec["config"], dtype=dtype)
    m = keras_hub.models
    if config.family == "gemma4":  # text only: no vision, audio or video tokens or converters
        from toolkit.weights import keras_gemma4

        keras_gemma4.set_backbone_weights(backbone, config, params)
        tokenizer = m.Gemma4Tokenizer(proto=tokenizer_proto, has_vision_tokens=False, has_audio_tokens=False,
                                      has_video_tokens=False)
        pre = m.Gemma4CausalLMPreprocessor(tokenizer=tokenizer, image_converter=None, sequence_length=sequence_length)
        return m.Gemma4CausalLM(backbone=backbone, preprocessor=pre)
    set_backbone_weights(backbone, config, params)
    if spec["class_name"] == "Gemma3Backbone":  # text-only: no image converter, no vision tokens
        tokenizer = m.Gemma3Tokenizer(proto=tokenizer_proto, has_vision_tokens=False)
        pre = m.Gemma3CausalLMPreprocessor(tokenizer=tokenizer, image_converter=None, sequence_length=sequence_length)
        return m.Gemma3CausalLM(backbone=backbone, preprocessor=pre)
    tokenizer = m.GemmaTokenizer(proto=tokenizer_proto)
    pre = m.GemmaCausalLMPreprocessor(tokenizer=tokenizer, sequence_length=sequence_length)
    return m.GemmaCausalLM(backbone=backbone, preprocessor=pre)


def lora_layer_indices(config: ModelConfig, targets: tuple[str, ...]) -> dict[str, int]:
    """Our adapter prefix (`layers.3.attn.q_proj`) -> the index keras-hub's LoRA file uses.

    keras-hub keys adapters by position in the backbone's flattened list of layers
    that own weights, an order fixed by the architecture's structure, not its sizes.
    So a skeleton backbone (same family, flags and depth; every width tiny) is built
    to read the positions, and a 7B export never allocates a 7B keras model.
    """
    from toolkit.quiet import import_quietly

    keras_hub = import_quietly("keras_hub")

    spec = backbone_spec(config)
    c = dict(spec["config"], vocabulary_size=8, hidden_dim=8, intermediate_dim=8, head_dim=2)
    if config.family == "gemma4":
        from toolkit.weights.keras_gemma4 import skeleton_widths

        c.update(skeleton_widths(config))
    backbone = getattr(keras_hub.models, spec["class_name"])(**c, dtype="float32")
    names = [KERAS_LAYER_NAMES[t] for t in targets]
    backbone.enable_lora(1, target_layer_names=names)
    # The same enumeration keras-hub's save_lora_weights / load_lora_weights do.
    with_weights = [lyr for lyr in backbone._flatten_layers(include_self=False) if lyr.weights]
    position = {id(lyr): i for i, lyr in enumerate(with_weights)}
    out: dict[str, int] = {}
    for i, block in enumerate(backbone.transformer_layers):
        for lyr in block._flatten_layers(include_self=False):
            if lyr.name in names and id(lyr) in position:
                out[f"layers.{i}.{OUR_PROJECTIONS[lyr.name]}"] = position[id(lyr)]
    if sorted(out.values()) != sorted(backbone._lora_enabled_layers):
        raise ExportError(f"keras-hub's LoRA layer order for {spec['class_name']} is not the one this exporter "
                          f"knows (found {len(out)} of {len(backbone._lora_enabled_layers)} layers); "
                          "check the keras-hub version against pyproject.toml")
    return out


def write_lora_h5(path: Path, lora: Mapping[str, np.ndarray], config: ModelConfig, rank: int,
                  targets: tuple[str, ...], scale: float) -> None:
    """keras-hub's `save_lora_weights` file, written with Keras's own H5 store.

    keras-hub's adapters have alpha = rank (scale 1), so our alpha / rank is folded
    into B: keras then computes the same update A @ (scale * B).
    """
    from keras.src.saving.saving_lib import H5IOStore

    if not str(path).endswith(".lora.h5"):
        raise ExportError(f"{path}: keras-hub reads LoRA weights only from a file ending in .lora.h5")
    store = H5IOStore(path, mode="w")
    try:
        store.make("lora")["rank"] = np.int64(rank)
        for prefix, index in sorted(lora_layer_indices(config, targets).items(), key=lambda kv: kv[1]):
            entry = store.make(f"lora/{index}")
            entry["lora_kernel_a"] = np.asarray(lora[f"{prefix}.lora_a"], np.float32)
            entry["lora_kernel_b"] = np.asarray(lora[f"{prefix}.lora_b"], np.float32) * np.float32(scale)
    finally:
        store.close()
