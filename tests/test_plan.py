"""The memory planner (`launch/plan.py`, `toolkit/plan.py`): each part counted from the model's
own shapes, shardings and remat policy, checked against the arrays a real model holds."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import pytest
from flax import nnx

from conftest import ROOT, subprocess_env
from toolkit.plan import plan


@pytest.mark.slow
def test_each_part_is_what_the_model_and_its_optimizer_hold():
    from toolkit.config import TrainConfig
    from toolkit.models.configs import Runtime, get_config
    from toolkit.models.gemma import FROZEN_FILTER, Gemma
    from toolkit.models.lora import LoRAConfig
    from toolkit.train.loop import make_optimizer

    lora = plan("tiny_gemma3", mode="lora", batch=4, length=32, compile=False)
    model = Gemma(get_config("tiny_gemma3"), runtime=Runtime(param_dtype="bfloat16", dtype="bfloat16"),
                  lora=LoRAConfig(), rngs=nnx.Rngs(0))
    frozen = sum(v[...].nbytes for _, v in nnx.to_flat_state(nnx.state(model, FROZEN_FILTER)))
    adapters = nnx.state(model, nnx.LoRAParam)
    assert lora["frozen"] == frozen
    assert lora["trainable"] == lora["gradients"] == sum(x.nbytes for x in jax.tree.leaves(adapters))
    opt = make_optimizer(TrainConfig(), 100)[0].init(adapters)
    assert lora["optimizer"] == sum(x.nbytes for x in jax.tree.leaves(opt))
    assert lora["activations"] > 0 and lora["total"] == sum(lora[k] for k in
                                                           ("frozen", "trainable", "optimizer", "gradients", "activations"))
    # Remat trades saved activations for recompute; a quantized base shrinks only the frozen part.
    assert plan("tiny_gemma3", mode="lora", batch=4, length=32, remat="full", compile=False)["activations"] \
        < lora["activations"] < plan("tiny_gemma3", mode="lora", batch=4, length=32, remat="none",
                                     compile=False)["activations"]
    int4 = plan("tiny_gemma3", mode="lora", base_quant="int4", batch=4, length=32, compile=False)
    assert int4["frozen"] <= 0.6 * lora["frozen"] and int4["trainable"] == lora["trainable"]


@pytest.mark.slow
def test_full_trains_everything_and_head_compiles_only_the_forward():
    full = plan("tiny_gemma3", mode="full", batch=4, length=32, compile=False)
    assert full["frozen"] == 0 and full["trainable"] > 0 and full["optimizer"] >= 2 * full["trainable"]
    head = plan("tiny_gemma3", mode="head", batch=4, length=32, compile=True)
    assert head["gradients"] == 0 and head["trainable"] == 2 * 32 * 4  # two classes x embed 32, fp32
    assert head["activations"] == head["compiled_temp"] > 0
    from toolkit.config import ConfigError

    with pytest.raises(ConfigError, match="mode full trains every weight"):
        plan("tiny_gemma3", mode="full", base_quant="int8", compile=False)


def test_the_out_of_memory_message_carries_the_planners_bill():
    from toolkit.config import TrainConfig
    from toolkit.models.configs import Runtime, get_config
    from toolkit.train.loop import memory_bill
    from toolkit.train.mesh import make_mesh

    bill = memory_bill(get_config("tiny_gemma3"), Runtime(param_dtype="float32", dtype="float32"), TrainConfig(batch_size=8),
                       make_mesh(devices=jax.devices()[:1]), 64)
    assert bill.startswith(" The planner's bill (launch/plan.py): tiny_gemma3 lora base none (float32), batch 8 x 64")
    assert "activations" in bill and "fits 16GB: yes" in bill


@pytest.mark.slow
def test_the_cli_plans_a_mesh_on_fake_devices_and_splits_the_base_and_the_rows():
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "plan.py"), "--model", "tiny_gemma3", "--mode", "lora",
                        "--mesh", "1,1,1", "1,4,2", "--batch", "8", "--length", "32", "--json"],
                       capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    one, eight = (json.loads(x) for x in r.stdout.strip().splitlines())
    assert eight["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert eight["frozen"] <= one["frozen"] / 2  # split by fsdp (and tensor where a dim divides)
    assert eight["activations"] == one["activations"] // 4  # rows over data x fsdp
    assert one["compiled_temp"] > 0 and one["fits"] == {"16GB": True, "80GB": True, "141GB": True}
    bad = subprocess.run([sys.executable, str(ROOT / "launch" / "plan.py"), "--model", "gemma_99b"],
                         capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert bad.returncode != 0 and "gemma_99b" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
