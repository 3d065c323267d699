"""Scale equivalence: the same steps on 1 device, 8 fake CPU devices and 2 processes agree.

Each configuration runs in a fresh process (tests/scale_worker.py), because
the device count is fixed when JAX starts. Tolerance: relative difference
<= 1e-5 in fp32 for every loss and every LoRA tensor (the only differences
are the order of floating-point sums across devices).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, free_port, subprocess_env

WORKER = ROOT / "tests" / "scale_worker.py"
REF = "1x1x1@1"


def _results(path: Path, spec: str) -> dict[str, np.ndarray]:
    z = np.load(path)
    return {k[len(spec) + 1:]: z[k] for k in z.files if k.startswith(spec + "/")}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _assert_same_training(got: dict, ref: dict, what: str) -> None:
    assert len(ref["loss"]) >= 4 and np.all(np.isfinite(ref["loss"]))
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, err_msg=f"{what}: loss curve")
    params = [k for k in ref if k not in ("loss", "frozen_specs")]
    assert len(params) == 4 * 7 * 2  # 4 layers x 7 targets x (A, B)
    worst = max((_rel(got[k], ref[k]), k) for k in params)
    assert worst[0] <= 1e-5, f"{what}: {worst[1]} differs by {worst[0]:.2e} (relative)"


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale") / "r.npz"
    r = subprocess.run([sys.executable, str(WORKER), "--devices", "8", "--meshes", f"{REF},8x1x1,2x2x2,1x1x8",
                        "--out", str(out)], env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["8x1x1", "2x2x2", "1x1x8"])
def test_one_device_and_eight_device_meshes_train_identically(eight_devices, mesh):
    _assert_same_training(_results(eight_devices, mesh), _results(eight_devices, REF), f"mesh {mesh}")


@pytest.mark.slow
def test_meshes_really_shard_the_frozen_weights(eight_devices):
    assert set(_results(eight_devices, REF)["frozen_specs"]) == {"P()"}
    specs_222 = set(_results(eight_devices, "2x2x2")["frozen_specs"])
    assert any("fsdp" in s for s in specs_222) and any("tensor" in s for s in specs_222)
    assert any("tensor" in s for s in _results(eight_devices, "1x1x8")["frozen_specs"])


@pytest.mark.slow
def test_two_processes_of_four_devices_train_like_one_device(eight_devices, tmp_path):
    out = tmp_path / "mp.npz"
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--devices", "4", "--meshes", "2x2x2",
                               "--process-id", str(i), "--num-processes", "2",
                               "--coordinator", f"127.0.0.1:{port}", "--out", str(out)],
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        errs = [p.communicate(timeout=900)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    ref = _results(eight_devices, REF)
    # 2x2x2 splits every axis, data, fsdp and tensor, across the two processes at once.
    _assert_same_training(_results(out, "2x2x2"), ref, "2 processes, mesh 2x2x2")


def test_gemma_7b_shapes_get_a_valid_sharding_on_16_devices():
    """Abstract shapes only: no weights, no devices (an AbstractMesh)."""
    import jax
    from flax import nnx
    from jax.sharding import AbstractMesh

    from toolkit.config import TrainConfig
    from toolkit.models.configs import get_config
    from toolkit.models.gemma import Gemma
    from toolkit.models.lora import LoRAConfig
    from toolkit.train.loop import make_optimizer
    from toolkit.train.mesh import MESH_AXES, state_specs
    from toolkit.train.step import FROZEN

    for name in ("gemma_7b", "gemma_2b"):
        cfg = get_config(name)
        model = nnx.eval_shape(lambda: Gemma(cfg, lora=LoRAConfig(rank=8, targets=("q", "k", "v", "o", "gate", "up",
                                                                                   "down")), rngs=nnx.Rngs(0)))
        mesh = AbstractMesh((2, 2, 4), MESH_AXES)
        sizes = dict(zip(MESH_AXES, (2, 2, 4)))
        frozen, lora = nnx.state(model, FROZEN), nnx.state(model, nnx.LoRAParam)
        for state in (frozen, lora):
            flat_vars = nnx.to_flat_state(state)
            flat_specs = dict(nnx.to_flat_state(state_specs(state, mesh)))
            for path, var in flat_vars:
                spec = flat_specs[path].get_value()
                for dim, axes in zip(var.shape, tuple(spec)):
                    n = int(np.prod([sizes[a] for a in ((axes,) if isinstance(axes, str) else axes or ())]))
                    assert dim % n == 0, f"{name} {path}: dim {dim} split {n} ways"
                spec = tuple(spec) + (None,) * (len(var.shape) - len(tuple(spec)))
                if path[0] == "layers":  # the scanned model's stacked layer axis is never split
                    assert var.shape[0] == cfg.num_layers and spec[0] is None, f"{path}: layer axis sharded"
                    spec = spec[1:]
                if path[-1] == "lora_a":
                    assert spec[-1] is None, f"{path}: rank axis sharded"
                if path[-1] == "lora_b":
                    assert spec[0] is None, f"{path}: rank axis sharded"
        specs = dict(nnx.to_flat_state(state_specs(frozen, mesh)))
        q = tuple(specs[("layers", "attn", "q_proj", "kernel")].get_value())[1:]
        k = tuple(specs[("layers", "attn", "k_proj", "kernel")].get_value())[1:]
        assert q[0] == "tensor" and q[1] == "fsdp"
        if name == "gemma_2b":  # one KV head: replicated over tensor, not an error (keras-hub #1613)
            assert k[0] is None and k[1] == "fsdp"
        else:
            assert k[0] == "tensor"
        tx, _ = make_optimizer(TrainConfig(), 100)
        opt = jax.eval_shape(tx.init, lora)
        lora_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(lora))
        opt_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt) if x.ndim > 0)
        assert opt_bytes == 2 * lora_bytes  # Adam's mu and nu; the frozen base has no optimizer state
        assert lora_bytes < 0.02 * sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(frozen))
