"""Device meshes, and the one table that maps the models' logical axes to mesh axes.

Models name their axes (vocab, embed, heads, kv_heads, head_dim, mlp, expert, per_layer) and
know nothing of devices; a run names its mesh (data, fsdp, tensor). The rule
table below is the only place the two meet, so the same model shards on one
CPU, a GPU host or a TPU pod without a change.

A dimension that does not divide the mesh axes its rule names is replicated
instead (Gemma 2B has a single KV head: it cannot be split over `tensor`,
keras-hub issue 1613). LoRA A/B carry their base kernel's names except the
rank axis, which has no rule and is never split (keras issue 19496).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from toolkit.config import MESH_AXES, MeshConfig

# logical axis -> mesh axes (tried together; replicated if the size does not divide).
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "head_dim": (),
    # Whole experts of a mixture-of-experts layer (toolkit.models.moe) over the fsdp axis:
    # expert parallelism where the frozen weights are already split, with no fourth mesh
    # axis. An expert's own embed dim then stays whole (a mesh axis is used once).
    "expert": ("fsdp",),
    # Gemma 4's per-layer inputs (2B/4B): its second embedding table, vocab x (layers x 256),
    # is 2.3B of the 2B's 5.1B weights; split over fsdp like `embed`, not copied to every device.
    "per_layer": ("fsdp",),
}


def make_mesh(cfg: MeshConfig | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    cfg = cfg or MeshConfig()
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.sizes(len(devices))
    if len(devices) == jax.device_count():
        # Lets JAX order devices by the physical topology (ICI rings on TPU).
        return jax.make_mesh(shape, MESH_AXES, devices=devices,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Any,
                    rules: Mapping[str, tuple[str, ...]] = LOGICAL_RULES) -> P:
    """PartitionSpec for a value with logical axis `names` and `shape` on `mesh`.

    Mesh axes of size 1 are dropped; a dim whose size does not divide the
    product of its mesh axes is replicated; a mesh axis is used at most once.
    """
    if not names:
        return P()
    sizes = dict(mesh.shape)
    used: set[str] = set()
    spec: list[Any] = []
    for name, dim in zip(names, shape):
        axes = tuple(a for a in rules.get(name, ()) if name is not None and sizes.get(a, 1) > 1 and a not in used)
        if not axes or dim % math.prod(sizes[a] for a in axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _names(v: nnx.Variable) -> tuple[str | None, ...] | None:
    meta = v.get_metadata()
    return meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")


def _map_variables(fn: Any, state: nnx.State) -> nnx.State:
    # Keep the Variable wrappers so the result has the same pytree structure as `state`.
    return jax.tree.map(lambda v: v.replace(fn(v)) if isinstance(v, nnx.Variable) else fn(v),
                        state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _spec(v: Any, mesh: Any) -> P:
    return logical_to_spec(_names(v), v.shape, mesh) if isinstance(v, nnx.Variable) else P()


def state_specs(state: nnx.State, mesh: Any) -> nnx.State:
    """PartitionSpecs for every variable of `state` (abstract or concrete) by the rule table;
    `mesh` may be abstract (sizes only)."""
    return _map_variables(lambda v: _spec(v, mesh), state)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    return _map_variables(lambda v: NamedSharding(mesh, _spec(v, mesh)), state)


def place(tree: Any, shardings: Any) -> Any:
    """Put host or single-device arrays onto `shardings`, in one process or many.

    Every process holds the full value (weights are loaded on each host), so
    each device's shard is cut from it locally: no cross-host transfer.
    """

    def one(x, s):
        if isinstance(x, jax.Array) and x.sharding == s:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, s)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = np.asarray(jax.random.key_data(x))
            return jax.random.wrap_key_data(jax.make_array_from_callback(data.shape, s, lambda i: data[i]), impl=impl)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda i: host[i])

    return jax.tree.map(one, tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (dim 0, of any rank) split over every data-parallel axis (data x fsdp); other dims whole."""
    return NamedSharding(mesh, logical_to_spec(("batch",), (0,), mesh))


def data_parallel_size(mesh: Any) -> int:
    return math.prod(dict(mesh.shape).get(a, 1) for a in LOGICAL_RULES["batch"])


def process_rows(mesh: Mesh, global_rows: int) -> tuple[int, int]:
    """(slice index, slice count): which contiguous share of a global batch this process feeds.

    Derived from the batch sharding itself, so it is right for any mesh: on a
    tensor-only mesh every process feeds the whole batch (count 1).
    """
    s = batch_sharding(mesh)
    idx = s.addressable_devices_indices_map((global_rows,))
    starts = sorted({(sl[0].start or 0) for sl in idx.values()})
    stops = sorted({(sl[0].stop if sl[0].stop is not None else global_rows) for sl in idx.values()})
    lo, hi = starts[0], stops[-1]
    width = hi - lo
    if width <= 0 or global_rows % width or lo % width:
        raise ValueError(f"this process's devices hold rows {lo}:{hi} of {global_rows}, which is not one "
                         "contiguous equal share; order the mesh so each host's devices are adjacent")
    return lo // width, global_rows // width


def global_batch(mesh: Mesh, local: Mapping[str, np.ndarray], global_rows: int) -> dict[str, jax.Array]:
    """One global array per field from this process's rows (`jax.make_array_from_process_local_data`)."""
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh), v,
                                                        (global_rows, *v.shape[1:]))
    return out


def to_host(tree: Any) -> Any:
    """numpy copies of (possibly sharded, multi-host) arrays; a collective when not all local.

    Every process must call it when the arrays span processes.
    """
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def like_shardings(tree: Any, params: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree derived from `params` (an optimizer state): a leaf whose key
    path ends with a param's path and has its shape gets that param's sharding,
    anything else (step counters) is replicated. So Adam's mu and nu are split
    exactly like the adapters they belong to."""
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_s = jax.tree.leaves(params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    by_path = {tuple(str(k) for k in path): (leaf.shape, s) for (path, leaf), s in zip(flat_p, flat_s)}

    def pick(path, leaf):
        keys = tuple(str(k) for k in path)
        for n in range(len(keys)):
            hit = by_path.get(keys[n:])
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)
