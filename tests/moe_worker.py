"""The tiny Gemma 4 mixture-of-experts model's loss and LoRA gradients on one device and on
8 CPU devices with its experts split 4 ways (mesh data=2, fsdp=4); prints one JSON line.

Run by tests/test_gemma4.py in a fresh process, because the device count is fixed
when JAX starts:

    python tests/moe_worker.py [dense|sorted] [MODEL] [float32|float64] [JSON of config overrides]

float64 (base weights and compute) shows the sharded step is the
same computation: in fp32 the two meshes differ by rounding alone, ~4e-5 per leaf.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    dispatch = sys.argv[1] if len(sys.argv) > 1 else "dense"
    name = sys.argv[2] if len(sys.argv) > 2 else "tiny_gemma4_moe"
    dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
    overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from toolkit.xla_env import force_host_devices

    force_host_devices(8)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", dtype == "float64")
    from flax import nnx

    from toolkit.config import MeshConfig
    from toolkit.models.build import build_model
    from toolkit.models.configs import Runtime, get_config
    from toolkit.models.lora import LoRAConfig
    from toolkit.train.mesh import batch_sharding, make_mesh, place, state_shardings

    cfg = get_config(name, **overrides)
    rt = Runtime(param_dtype=dtype, dtype=dtype, remat="none", moe_dispatch=dispatch)
    model = build_model(cfg, runtime=rt, lora=LoRAConfig(rank=2, targets=("q", "o", "gate", "down")), rngs=nnx.Rngs(0))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):  # B != 0: A gets a gradient
        if path[-1] == "lora_b":
            var.set_value(0.1 * jax.random.normal(jax.random.key(len(path)), var.shape))
    graph, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(8, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None, :] < rng.integers(6, 13, size=(8, 1)))

    def loss(lora, rest, tokens, mask):
        rest = jax.tree.map(lambda x: x, rest)  # fresh RNG-stream variables at the gradient's trace level
        logits = nnx.merge(graph, lora, rest)(tokens, mask)[:, :-1]
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1)[..., 0]
        w = (mask[:, 1:] & mask[:, :-1]).astype(jnp.float32)
        return jnp.sum(ce * w) / jnp.sum(w)

    step = jax.jit(jax.value_and_grad(loss))
    one_loss, one_grads = step(lora, rest, tokens, mask)

    mesh = make_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    lora_s, rest_s = place(lora, state_shardings(lora, mesh)), place(rest, state_shardings(rest, mesh))
    rows = batch_sharding(mesh)
    args = (lora_s, rest_s, jax.device_put(tokens, rows), jax.device_put(mask, rows))
    with jax.set_mesh(mesh):
        mesh_loss, mesh_grads = step(*args)

    def bytes_of(wanted) -> tuple[int, list[int]]:
        """The total bytes of the frozen weights `wanted(path)` picks, and each device's share."""
        total, per_device = 0, {}
        for path, var in nnx.to_flat_state(rest_s):
            if wanted(path):
                arr = var[...]
                total += arr.nbytes
                for shard in arr.addressable_shards:
                    per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
        return total, [per_device.get(d, 0) for d in sorted(per_device)]

    expert_total, expert_per_device = bytes_of(lambda p: "experts" in p and p[-1] in ("gate_proj", "up_proj", "down_proj"))
    table_total, table_per_device = bytes_of(lambda p: p[0] == "per_layer_embedder")
    a, b = jax.tree.leaves(one_grads), jax.tree.leaves(mesh_grads)
    print(json.dumps({
        "dispatch": dispatch, "dtype": dtype,
        "loss_1": float(one_loss), "loss_8": float(mesh_loss),
        "grad_max_abs_diff": max(float(jnp.max(jnp.abs(x - np.asarray(y)))) for x, y in zip(a, b)),
        "grad_max_abs": max(float(jnp.max(jnp.abs(x))) for x in a),
        # per leaf, |g1 - g8| / |g1| (Frobenius): reduction order differs between the meshes
        "grad_rel_diff": max(float(jnp.linalg.norm(x - np.asarray(y)) / jnp.linalg.norm(x)) for x, y in zip(a, b)),
        "grad_leaves": len(a),
        "expert_bytes": expert_total,
        "expert_bytes_per_device": expert_per_device,
        "per_layer_table_bytes": table_total,  # Gemma 4's per-layer input table (the `per_layer` rule)
        "per_layer_table_bytes_per_device": table_per_device,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
