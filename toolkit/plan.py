"""How much memory a run needs on each device, before it runs (the memory planner).

Every figure comes from the model itself, not from formulas: the model is built with
`nnx.eval_shape` (no weights exist), each state is sharded by the one rule table
(`toolkit.train.mesh.state_shardings`) and counted by its per-device shard shapes,
the optimizer state is `jax.eval_shape` of the optimizer's own `init`, and the
activations are what the forward pass saves for the backward under the model's
remat policy (JAX's `saved_residuals` of the real loss, so remat and the layer scan
show up as they are), split over the data-parallel devices (data x fsdp: an upper
bound when tensor > 1, which also splits the MLP and head residuals). `compiled_temp` adds
the temporary bytes XLA allocates for the real train step compiled for the mesh on
this machine's backend (`compiled.memory_analysis()`): on CPU that includes fp32
copies of bf16 weights (XLA:CPU upcasts bf16 matmuls), so it is a CPU figure, not
an accelerator's.

Modes: `lora` (adapters train, the base is frozen), `full` (every weight trains: the
same step with all parameters as its trainable state), `head` (a linear head on the
frozen model: only the forward pass, the scorer, is compiled; the head and its
optimizer are a few KB).

`launch/plan.py` is the CLI; the trainer's out-of-memory message quotes the same
numbers for its own run (`describe`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

from toolkit.config import TRAINABLE as MODES  # lora, head, full: what train.trainable takes

GB = 1e9
DEVICE_GB = (16, 80, 141)  # TPU v5e, A100/H100 80 GB, H200
PARTS = ("frozen", "trainable", "optimizer", "gradients", "activations")



def _per_device(tree: Any, shardings: Any) -> int:
    """Bytes of `tree`'s largest per-device shard set: sum over leaves of shard size."""
    import jax
    import numpy as np
    from flax import nnx

    def unwrap(x: Any) -> Any:
        return x.get_value() if isinstance(x, nnx.Variable) else x

    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
    shards = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, nnx.Variable) or hasattr(x, "shard_shape"))
    total = 0
    for leaf, sh in zip(leaves, shards):
        leaf, sh = unwrap(leaf), unwrap(sh)
        total += math.prod(sh.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return int(total)


def _saved_residuals(graph: Any, trainable: Any, frozen: Any, rest: Any, batch: int, length: int) -> int:
    """Bytes the forward pass keeps for the backward under the model's remat policy (whole
    batch): what JAX's own `saved_residuals` lists, less the arguments (weights, batch)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax._src.ad_checkpoint import saved_residuals

    from toolkit.train.step import as_segments, row_losses

    s = jax.ShapeDtypeStruct
    rows = {"tokens": s((batch, length), jnp.int32), "lengths": s((batch,), jnp.int32),
            "labels": s((batch,), jnp.int32), "weights": s((batch,), jnp.float32)}

    def objective(trainable: Any, frozen: Any, rest: Any, rows: Any) -> Any:
        model = nnx.merge(graph, trainable, frozen, jax.tree.map(lambda x: x, rest))
        ce, _ = row_losses(model, as_segments(rows), jnp.asarray([0, 1]), "class", None)
        return jnp.sum(ce)

    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
                   for a, source in saved_residuals(objective, trainable, frozen, rest, rows)
                   if "argument" not in source))


def plan(model: Any, *, mode: str = "lora", base_quant: str = "none", batch: int = 8, length: int = 512,
         mesh: Sequence[int] = (1, 1, 1), param_dtype: str = "bfloat16", dtype: str = "bfloat16",
         remat: str = "dots", lora: Any = None, compile: bool = True, devices: Sequence[Any] | None = None
         ) -> dict[str, Any]:
    """Per-device bytes of each part of a `mode` run of `model` (a named architecture or a
    `ModelConfig`) at `batch` x `length`
    on a (data, fsdp, tensor) `mesh`, and which device sizes it fits. Needs
    prod(mesh) devices (fake CPU devices do: `--xla_force_host_platform_device_count`)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from toolkit.config import MeshConfig, TrainConfig
    from toolkit.models.configs import Runtime, get_config
    from toolkit.models.build import build_model
    from toolkit.models.gemma import FROZEN_FILTER
    from toolkit.models.lora import LoRAConfig
    from toolkit.train import mesh as mesh_lib
    from toolkit.train.optim import make_optimizer
    from toolkit.train.step import StepShardings, make_score_step, make_train_step

    from toolkit.config import ConfigError

    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "full" and base_quant != "none":
        raise ConfigError(f"mode full trains every weight, so the base cannot be stored quantized (base_quant "
                         f"{base_quant!r}); use lora with a quantized base, or full with base_quant none")
    n = math.prod(mesh)
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < n:
        raise ConfigError(f"mesh {tuple(mesh)} needs {n} devices; {len(devices)} here (on CPU set XLA_FLAGS="
                         f"--xla_force_host_platform_device_count={n} before JAX starts: launch/plan.py does)")
    cfg = get_config(model) if isinstance(model, str) else model
    # Plans are for accelerators: a mixture of experts compiles their grouped-matmul dispatch,
    # not the CPU einsum.
    rt = Runtime(param_dtype=param_dtype, dtype=dtype, remat=remat, base_quant=base_quant,
                 moe_dispatch="sorted" if cfg.num_experts else "auto")
    lora = (lora or LoRAConfig()) if mode == "lora" else None
    m = mesh_lib.make_mesh(MeshConfig(data=mesh[0], fsdp=mesh[1], tensor=mesh[2]), devices=devices[:n])
    abstract = nnx.eval_shape(lambda: build_model(cfg, runtime=rt, lora=lora, rngs=nnx.Rngs(0)))
    abstract.train()
    if mode == "lora":
        graph, trainable, frozen, rest = nnx.split(abstract, nnx.LoRAParam, FROZEN_FILTER, ...)
    elif mode == "full":
        graph, trainable, frozen, rest = nnx.split(abstract, nnx.Param, nnx.Nothing, ...)
    else:  # no adapters: the (empty) LoRA state keeps the scorer's signature
        graph, no_lora, frozen, rest = nnx.split(abstract, nnx.LoRAParam, FROZEN_FILTER, ...)
        trainable = {"head": jax.ShapeDtypeStruct((2, cfg.embed_dim), jnp.float32)}
    rep = mesh_lib.replicated(m)
    frozen_s = mesh_lib.state_shardings(frozen, m)
    train_s = mesh_lib.state_shardings(trainable, m) if mode != "head" else jax.tree.map(lambda _: rep, trainable)
    tx, _ = make_optimizer(TrainConfig(), total_steps=100)
    opt = jax.eval_shape(tx.init, trainable)
    opt_s = mesh_lib.like_shardings(opt, trainable, train_s, m)
    out: dict[str, Any] = {
        "model": cfg.name, "mode": mode, "base_quant": base_quant, "param_dtype": param_dtype, "dtype": dtype,
        "remat": remat, "batch": batch, "length": length, "mesh": dict(zip(mesh_lib.MESH_AXES, mesh)),
        "trainable_params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(trainable))),
        "frozen": _per_device(frozen, frozen_s), "trainable": _per_device(trainable, train_s),
        "optimizer": _per_device(opt, opt_s)}
    out["gradients"] = 0 if mode == "head" else out["trainable"]
    dp = mesh_lib.data_parallel_size(m)  # rows split over data x fsdp; tensor splits them no further here
    out["activations"] = 0 if mode == "head" else _saved_residuals(graph, trainable, frozen, rest, batch, length) // dp
    out["compiled_temp"] = None
    if compile:
        rest_s = jax.tree.map(lambda _: rep, rest)
        sh = StepShardings(lora=train_s, opt_state=opt_s, frozen=frozen_s, rest=rest_s,
                           batch=mesh_lib.batch_sharding(m), replicated=rep)

        def abstract_of(tree: Any, shardings: Any) -> Any:  # each leaf's shape on its sharding
            return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

        b = sh.batch
        t0 = time.perf_counter()
        batch_spec = {"tokens": jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=b),
                      "lengths": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=b),
                      "labels": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=b),
                      "weights": jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=b)}
        class_ids = jax.ShapeDtypeStruct((2,), jnp.int32, sharding=rep)
        if mode == "head":
            score = make_score_step(graph, shardings=sh._replace(lora=mesh_lib.state_shardings(no_lora, m)))
            lowered = score.lower(no_lora, abstract_of(frozen, frozen_s), abstract_of(rest, rest_s),
                                  batch_spec, class_ids, None)
        else:
            step = make_train_step(graph, tx, shardings=sh)
            lowered = step.lower(abstract_of(trainable, train_s), abstract_of(opt, opt_s),
                                 abstract_of(frozen, frozen_s), abstract_of(rest, rest_s), batch_spec, class_ids, None)
        analysis = lowered.compile().memory_analysis()
        out["compile_seconds"] = round(time.perf_counter() - t0, 1)  # lowering + XLA, on this machine
        out["compiled_temp"] = int(analysis.temp_size_in_bytes) if analysis is not None else None
        # What the compiled program takes as inputs on one device (weights, optimizer, batch).
        out["compiled_arguments"] = int(analysis.argument_size_in_bytes) if analysis is not None else None
        if mode == "head":  # no backward pass: the forward's working set is all there is
            out["activations"] = out["compiled_temp"]
    out["total"] = int(sum(out[k] or 0 for k in PARTS))
    out["fits"] = {f"{gb}GB": out["total"] <= gb * GB * 0.9 for gb in DEVICE_GB}  # 10% for the runtime
    return out


def _size(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"


def describe(p: dict[str, Any]) -> str:
    """One line: each part's bytes per device, and the verdict."""
    parts = ", ".join(f"{k} {_size(p[k])}" for k in PARTS if p.get(k) is not None)
    fits = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in p["fits"].items())
    mesh = "x".join(str(v) for v in p["mesh"].values())
    return (f"{p['model']} {p['mode']} base {p['base_quant']} ({p['param_dtype']}), batch {p['batch']} x "
            f"{p['length']}, mesh {mesh}, remat {p['remat']}: per device {_size(p['total'])} ({parts}); "
            f"fits {fits}")
