"""The weight exchange format and the model's own layout: the one place layers are stacked.

Everything outside the model (importers, exporters, saved classifiers, LoRA
files, keras-hub round trips) speaks the flat exchange format, one tensor per
layer: `layers.{i}.attn.q_proj.kernel`. A layer-scanned model (the default,
`Runtime.scan_layers`) holds each of those as one array with a leading
`layers` axis, `layers.attn.q_proj.kernel` of shape (num_layers, ...), so that
one compiled layer body runs under `lax.scan`. Converting here, and only here,
is what lets the model's layout change without any file format changing.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

_PER_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_STACKED = "layers."


class Deferred:
    """A tensor made only when a consumer asks for it (`np.asarray`), then dropped by it.

    Loading a checkpoint tensor by tensor this way keeps one fp32 tensor in memory at a
    time instead of the whole model: a GGUF is dequantized, and a layer stack built,
    just before its device copy is made."""

    def __init__(self, shape: tuple[int, ...], make: Any):
        self.shape, self._make = tuple(shape), make  # make(dtype) -> array

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Made straight in `dtype` when asked for one (a bf16 base never holds an fp32 copy)."""
        return self._make(np.dtype(dtype) if dtype is not None else np.dtype(np.float32))


def is_stacked_name(name: str) -> bool:
    return name.startswith(_STACKED) and _PER_LAYER.match(name) is None


def to_exchange(flat: Mapping[str, Any], scanned: bool) -> dict[str, Any]:
    """Model-layout tensors -> exchange format (stacked `layers.x` split into `layers.{i}.x`)."""
    if not scanned:
        return dict(flat)
    out: dict[str, Any] = {}
    for name, value in flat.items():
        if is_stacked_name(name):
            rest = name[len(_STACKED):]
            for i in range(value.shape[0]):
                out[f"layers.{i}.{rest}"] = value[i]
        else:
            out[name] = value
    return out


def exchange_shapes(shapes: Mapping[str, tuple[int, ...]], scanned: bool) -> dict[str, tuple[int, ...]]:
    """The exchange-format names and shapes of a model whose own layout has `shapes`."""
    if not scanned:
        return {k: tuple(v) for k, v in shapes.items()}
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if is_stacked_name(name):
            for i in range(shape[0]):
                out[f"layers.{i}.{name[len(_STACKED):]}"] = tuple(shape[1:])
        else:
            out[name] = tuple(shape)
    return out


def to_model(flat: Mapping[str, Any], num_layers: int, scanned: bool) -> dict[str, Any]:
    """Exchange-format tensors -> the model's layout (per-layer tensors stacked in layer order).

    A stacked name gets a value only when every layer supplies it; callers
    validate completeness against `exchange_shapes` first. Stacks are `Deferred`:
    built when read, so only one is ever in memory.
    """
    if not scanned:
        return dict(flat)
    out: dict[str, Any] = {}
    groups: dict[str, dict[int, Any]] = {}
    for name, value in flat.items():
        m = _PER_LAYER.match(name)
        if m is None:
            out[name] = value
        else:
            groups.setdefault(m.group(2), {})[int(m.group(1))] = value
    for rest, per_layer in groups.items():
        if sorted(per_layer) != list(range(num_layers)):
            missing = sorted(set(range(num_layers)) - set(per_layer))
            raise KeyError(f"layers.{missing[0] if missing else '?'}.{rest}")
        out[_STACKED + rest] = Deferred(
            (num_layers, *per_layer[0].shape),
            lambda dtype, per_layer=per_layer: np.stack([np.asarray(per_layer[i], dtype=dtype)
                                                         for i in range(num_layers)]))
    return out
