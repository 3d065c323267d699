"""Weights placed shard by shard as they load: the base never sits whole on one device."""

import json
import subprocess
import sys

import jax
import pytest
from flax import nnx

import keras_fixtures as kf
from conftest import ROOT, subprocess_env
from toolkit.models.configs import Runtime
from toolkit.models.gemma import FROZEN_FILTER
from toolkit.train.mesh import make_mesh, state_shardings
from toolkit.weights.loader import load_pretrained


@pytest.mark.parametrize("source", ["keras_preset", "random"])
def test_the_loader_puts_each_frozen_tensor_straight_into_its_sharding(source, tmp_path):
    mesh = make_mesh(devices=jax.devices()[:1])
    asked = {}

    def shardings(abstract):
        out = state_shardings(abstract, mesh)
        asked.update({p: (s.get_value() if isinstance(s, nnx.Variable) else s) for p, s in nnx.to_flat_state(out)})
        return out

    spec = str(kf.make_preset("gemma3", tmp_path)) if source == "keras_preset" else "random:tiny_gemma3"
    model, _ = load_pretrained(spec, runtime=Runtime(param_dtype="float32"), shardings=shardings)
    frozen = nnx.to_flat_state(nnx.state(model, FROZEN_FILTER))
    assert asked and len(asked) == len(frozen)
    for path, var in frozen:
        assert var.get_value().sharding == asked[path], path  # placed as loaded, not moved later


@pytest.mark.slow
def test_sharded_load_bench_on_8_devices_gives_each_device_an_eighth():
    r = subprocess.run([sys.executable, str(ROOT / "bench/sharded_load.py"), "--model", "random:tiny_gemma3",
                        "--out", "-"], capture_output=True, text=True, timeout=600, env=subprocess_env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    load, abstract = out["load"], out["abstract"]
    assert load["devices"] == 8 and load["embedding_largest_device_share"] == 0.125
    assert load["worst_split_share"] == 0.125 and load["split_tensors"] >= 10
    assert load["peak_rss_gb"] > 0
    # gemma_7b in bf16 on data=1 x fsdp=4 x tensor=2: ~17 GB of base, an eighth per device.
    assert abstract["model"] == "gemma_7b" and 16 < abstract["frozen_gb"] < 18
    assert abstract["fraction"] == 0.125 and abstract["per_device_gb"] < 2.2
