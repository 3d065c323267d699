"""Weights placed shard by shard as they load (issue 22): no device ever holds a whole frozen
tensor unless the rule table replicates it.

    python bench/sharded_load.py                     # 270M on 8 CPU devices, fsdp=8; gemma_7b on a 2x4 mesh
    python bench/sharded_load.py --model random:tiny_gemma3 --out -     # what the test runs

Prints one JSON object (and writes it atomically to `--out`):

* **load**: `AgileClassifier(model=--model, mesh={fsdp: --fsdp})` loads its base on
  `--devices` forced host devices (`XLA_FLAGS=--xla_force_host_platform_device_count`).
  For every frozen tensor, the largest share one device holds, measured from the
  array's own shards (`addressable_shards`), as a fraction of the tensor's bytes; the
  embedding's; the worst over all tensors that the rules split; and the peak host RSS
  of the process during loading (`ru_maxrss`), with the RSS before it.
* **abstract**: `--abstract-model` (gemma_7b) made with `nnx.eval_shape` (no memory), its
  frozen state's shardings on an abstract `--abstract-mesh` (data, fsdp, tensor) mesh from
  the same rule table, and the bytes each device would hold, as `jit(init,
  out_shardings=...)` (how `random:` models are built) puts them: total, per device,
  and the largest tensor slice.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from toolkit.xla_env import force_host_devices  # noqa: E402  (no JAX import)

RESULT = ROOT / "bench" / "results" / "sharded_load.json"


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def load(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from toolkit.classifier import AgileClassifier

    rss0 = _rss_gb()
    t0 = time.perf_counter()
    clf = AgileClassifier(["no", "yes"], model=args.model, mesh={"data": "auto", "fsdp": args.fsdp, "tensor": 1},
                          param_dtype="float32", progress=False, base_quant=args.base_quant)
    clf._ensure_model()
    seconds = time.perf_counter() - t0
    rss1 = _rss_gb()
    tensors = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(clf._parts.frozen):
        name = jax.tree_util.keystr(path)
        largest = max(s.data.nbytes for s in leaf.addressable_shards)
        tensors[name] = {"shape": list(leaf.shape), "bytes": int(leaf.nbytes),
                         "largest_device_share": round(largest / leaf.nbytes, 6),
                         "spec": str(leaf.sharding.spec)}
    split = {k: v for k, v in tensors.items() if v["largest_device_share"] < 1}
    embed = next(v for k, v in tensors.items() if "input_embedding" in k and "scale" not in k)
    return {"model": args.model, "base_quant": args.base_quant, "devices": jax.device_count(), "fsdp": args.fsdp,
            "load_s": round(seconds, 2),
            "rss_before_gb": round(rss0, 3), "peak_rss_gb": round(rss1, 3),
            "frozen_bytes": int(sum(v["bytes"] for v in tensors.values())),
            "embedding_largest_device_share": embed["largest_device_share"],
            "split_tensors": len(split), "replicated_tensors": len(tensors) - len(split),
            "worst_split_share": max((v["largest_device_share"] for v in split.values()), default=None),
            "replicated": sorted(k for k in tensors if k not in split)[:20],
            "tensors": tensors if args.per_tensor else None,
            "ideal_share": round(1 / args.fsdp, 6)}


def abstract(args: argparse.Namespace) -> dict[str, Any]:
    import math

    import jax
    from flax import nnx
    from jax.sharding import AbstractMesh

    from toolkit.models.configs import Runtime, get_config
    from toolkit.models.build import build_model
    from toolkit.models.gemma import FROZEN_FILTER
    from toolkit.train.mesh import MESH_AXES, state_shardings

    sizes = tuple(int(x) for x in args.abstract_mesh.split(","))
    cfg = get_config(args.abstract_model)
    rt = Runtime(param_dtype="bfloat16", base_quant=args.base_quant)
    model = nnx.eval_shape(lambda: build_model(cfg, runtime=rt, rngs=nnx.Rngs(0)))
    frozen = nnx.state(model, FROZEN_FILTER)
    mesh = AbstractMesh(sizes, MESH_AXES)
    shard = dict(nnx.to_flat_state(state_shardings(frozen, mesh)))
    total = per_device = largest = 0
    for path, var in nnx.to_flat_state(frozen):
        s = shard[path]
        s = s.get_value() if hasattr(s, "get_value") else s
        itemsize = jax.numpy.dtype(var.dtype).itemsize
        full = math.prod(var.shape) * itemsize
        piece = math.prod(s.shard_shape(var.shape)) * itemsize
        total += full
        per_device += piece
        largest = max(largest, piece)
    return {"model": args.abstract_model, "mesh": dict(zip(MESH_AXES, sizes)), "param_dtype": "bfloat16",
            "base_quant": args.base_quant,
            "frozen_gb": round(total / 1e9, 3), "per_device_gb": round(per_device / 1e9, 3),
            "largest_slice_gb": round(largest / 1e9, 4), "fraction": round(per_device / total, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--fsdp", type=int, default=8)
    ap.add_argument("--abstract-model", default="gemma_7b")
    ap.add_argument("--abstract-mesh", default="1,4,2", help="data,fsdp,tensor sizes")
    ap.add_argument("--per-tensor", action="store_true", help="list every tensor's share")
    from toolkit.models.quant import MODES as QUANT_MODES

    ap.add_argument("--base-quant", default="none", choices=QUANT_MODES, help="the frozen base's storage")
    ap.add_argument("--out", default=str(RESULT), help="where the JSON goes ('-' = stdout only)")
    args = ap.parse_args()
    force_host_devices(args.devices)  # before JAX starts
    result = {"benchmark": "sharded_load", "load": load(args), "abstract": abstract(args)}
    from bench.emit import emit

    emit(result, args.out, indent=1)


if __name__ == "__main__":
    main()
