"""Train a tiny Gemma for a few steps on given meshes; write the loss curve and LoRA params.

Run by tests/test_scale.py in fresh processes, because the device count is
fixed when JAX starts:

    python tests/scale_worker.py --devices 8 --meshes 1x1x1@1,8x1x1,2x2x2,1x1x8 --out r.npz
    python tests/scale_worker.py --devices 4 --meshes 2x2x2 --process-id 0 --num-processes 2 \\
        --coordinator 127.0.0.1:PORT --out r.npz          # and the same with --process-id 1

"MESH@N" trains on the first N devices only. Every configuration sees the same
data, seed and initial weights, so their results must agree.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, required=True, help="CPU devices in this process")
    p.add_argument("--meshes", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--coordinator", default=None)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from toolkit.xla_env import force_host_devices

    force_host_devices(args.devices)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    from toolkit.config import DistributedSection, MeshConfig, TrainConfig
    from toolkit.train.distributed import initialize

    initialize(DistributedSection(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                  process_id=args.process_id))
    import jax
    import numpy as np
    from flax import nnx

    from toolkit.models.configs import Runtime, get_config
    from toolkit.models.gemma import Gemma
    from toolkit.models import layout
    from toolkit.models.lora import LoRAConfig
    from toolkit.train import loop
    from toolkit.train.callbacks import Callback
    from toolkit.train.mesh import make_mesh, to_host
    from toolkit.train.step import split_model

    # 8 query heads over one KV head, like Gemma 2B: the KV axis cannot split 8 ways.
    cfg = get_config("tiny_gemma2", num_heads=8, num_kv_heads=1)
    rt = Runtime(param_dtype="float32")
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(20, 500, size=int(rng.integers(3, 14)))) for _ in range(24)]
    labels = np.array([i % 2 for i in range(24)])
    head = [2, 30, 31, 32]
    train = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, schedule="constant",
                        log_every_steps=1)

    class Curve(Callback):  # keeps every step's loss
        def __init__(self):
            self.loss = []

        def on_metrics(self, fit, steps):
            self.loss.extend(s.metrics["loss"] for s in steps)

    results = {}
    for spec in args.meshes.split(","):
        shape, _, n = spec.partition("@")
        d, f, t = (int(x) for x in shape.split("x"))
        devices = jax.devices()[: int(n)] if n else jax.devices()
        mesh = make_mesh(MeshConfig(data=d, fsdp=f, tensor=t), devices=devices)
        model = Gemma(cfg, runtime=rt, lora=LoRAConfig(rank=4, dropout=0.1, targets=("q", "k", "v", "o", "gate", "up", "down")),
                      rngs=nnx.Rngs(0))
        placement = loop.place_parts(split_model(model), mesh, cfg, rt)
        curve = Curve()
        lora, _ = loop.fit(placement, ids, labels, [5, 9], train, max_length=16, progress=False, head=head,
                           callbacks=[curve])
        results[f"{spec}/loss"] = np.array(curve.loss)
        # Adapters by their exchange names (layers.{i}.attn.q_proj.lora_a): one entry per layer.
        flat = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(to_host(lora))}
        for name, value in layout.to_exchange(flat, model.stacking).items():
            results[f"{spec}/{name}"] = value
        specs = [str(s.spec) for s in jax.tree.leaves(placement.shardings.frozen,
                                                      is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))]
        results[f"{spec}/frozen_specs"] = np.array(sorted(set(specs)))
    if jax.process_index() == 0:
        np.savez(args.out, **results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
