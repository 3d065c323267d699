"""The weight exchange format and the model's own layout: the one place layers are stacked.

Everything outside the model (importers, exporters, saved classifiers, LoRA
files, keras-hub round trips) speaks the flat exchange format, one tensor per
layer: `layers.{i}.attn.q_proj.kernel`. A layer-scanned model (the default,
`Runtime.scan_layers`) holds several layers' tensors as one array with a
leading `layers` axis, so that one compiled layer body runs under `lax.scan`:

* Gemma 1-3: every layer, `layers.attn.q_proj.kernel` of shape (num_layers, ...).
* Gemma 4, whose local and global layers differ in shape: the repeating block of
  layer types (`Block`, from `blocks`). Block group g's position j holds layers
  `start + b * period + j` as `blocks.{g}.{j}.attn.q_proj.kernel` of shape
  (num_blocks, ...); a layer in no whole block (a remainder) stays `layers.{i}.*`.

A `Stacking` (from `stacking`) says which model prefix holds which layers, and
converting here, and only here, is what lets the model's layout change without
any file format changing.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    from toolkit.models.configs import ModelConfig

_PER_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")

# (model-layout prefix, the exchange layers stacked on its leading axis, in order); empty: unstacked.
Stacking = tuple[tuple[str, tuple[int, ...]], ...]


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


@dataclasses.dataclass(frozen=True)
class Block:
    """`blocks` runs of `period` consecutive layers from `start` whose shapes repeat: one
    scanned body of `period` layers runs `blocks` times."""

    start: int
    period: int
    blocks: int

    def layers(self, j: int) -> tuple[int, ...]:
        """The layers at position j of every block, in order: one stacked array's rows."""
        return tuple(self.start + b * self.period + j for b in range(self.blocks))

    @property
    def stop(self) -> int:
        return self.start + self.blocks * self.period


def _signature(cfg: "ModelConfig", i: int) -> tuple[Any, ...]:
    """What fixes a Gemma 4 layer's weight shapes and how it runs (its type, its K/V source)."""
    return (cfg.is_global_layer(i), cfg.kv_shared_source(i), cfg.layer_mlp_dim(i))


def blocks(cfg: "ModelConfig") -> tuple[Block, ...]:
    """Gemma 4's scanned blocks: in each of its two regions (the layers with their own K/V,
    then the K/V-shared tail) the shortest period whose layer signatures (type, K/V
    source, MLP width) repeat over at least two whole blocks: the local/global pattern
    (5 or 6 layers) on the real models. A region's leftover layers (fewer than a period),
    or a region too short for two blocks, run unrolled."""
    first_shared = cfg.num_layers - cfg.num_kv_shared_layers
    out = []
    for a, z in ((0, first_shared), (first_shared, cfg.num_layers)):
        for p in range(1, (z - a) // 2 + 1):
            nb = (z - a) // p
            if all(_signature(cfg, a + k) == _signature(cfg, a + k % p) for k in range(nb * p)):
                out.append(Block(a, p, nb))
                break
    return tuple(out)


def stacking(cfg: "ModelConfig", scanned: bool) -> Stacking:
    """Which model-layout prefix holds which exchange layers, for `cfg` scanned or not."""
    if not scanned:
        return ()
    if cfg.family != "gemma4":
        return (("layers.", tuple(range(cfg.num_layers))),)
    return tuple((f"blocks.{g}.{j}.", blk.layers(j)) for g, blk in enumerate(blocks(cfg)) for j in range(blk.period))


def _stacked_rest(name: str, stacks: Stacking) -> tuple[tuple[int, ...], str] | None:
    """(the layers a model-layout `name` stacks, the per-layer name's rest), or None."""
    for prefix, layers in stacks:
        if name.startswith(prefix) and _PER_LAYER.match(name) is None:
            return layers, name[len(prefix):]
    return None


def to_exchange(flat: Mapping[str, Any], stacks: Stacking) -> dict[str, Any]:
    """Model-layout tensors -> exchange format (each stacked array split into `layers.{i}.x`)."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        hit = _stacked_rest(name, stacks)
        if hit is None:
            out[name] = value
            continue
        layers, rest = hit
        for b, i in enumerate(layers):
            out[f"layers.{i}.{rest}"] = value[b]
    return out


def exchange_shapes(shapes: Mapping[str, tuple[int, ...]], stacks: Stacking) -> dict[str, tuple[int, ...]]:
    """The exchange-format names and shapes of a model whose own layout has `shapes`."""
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        hit = _stacked_rest(name, stacks)
        if hit is None:
            out[name] = tuple(shape)
            continue
        for i in hit[0]:
            out[f"layers.{i}.{hit[1]}"] = tuple(shape[1:])
    return out


def to_model(flat: Mapping[str, Any], stacks: Stacking) -> dict[str, Any]:
    """Exchange-format tensors -> the model's layout (per-layer tensors stacked in layer order).

    A stacked name gets a value only when every layer of its stack supplies it;
    callers validate completeness against `exchange_shapes` first. Stacks are
    `Deferred`: built when read, so only one is ever in memory.
    """
    where = {i: (prefix, layers) for prefix, layers in stacks for i in layers}
    out: dict[str, Any] = {}
    groups: dict[tuple[str, str], dict[int, Any]] = {}
    for name, value in flat.items():
        m = _PER_LAYER.match(name)
        if m is None or int(m.group(1)) not in where:
            out[name] = value
        else:
            groups.setdefault((where[int(m.group(1))][0], m.group(2)), {})[int(m.group(1))] = value
    stack_layers = dict(stacks)
    for (prefix, rest), per_layer in groups.items():
        layers = stack_layers[prefix]
        missing = [i for i in layers if i not in per_layer]
        if missing:
            raise KeyError(f"layers.{missing[0]}.{rest}")
        out[prefix + rest] = Deferred(
            (len(layers), *per_layer[layers[0]].shape),
            lambda dtype, per_layer=per_layer, layers=layers: np.stack([np.asarray(per_layer[i], dtype=dtype)
                                                                        for i in layers]))
    return out
