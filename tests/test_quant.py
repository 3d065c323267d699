"""A quantized frozen base (model.base_quant: int8 | int4): storage, the dequantize inside the
matmuls, sharded placement, and a classifier that trains, saves, loads and exports with it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import keras_fixtures as kf
from conftest import LABELS, VERBALIZERS, spam_ham
from toolkit.models import quant
from toolkit.models.configs import Runtime, get_config
from toolkit.models.build import build_model, from_params
from toolkit.models.gemma import FROZEN_FILTER, frozen_params
from toolkit.models.lora import LoRAConfig

MAX_BYTES = {"int8": 0.3, "int4": 0.17}  # of the fp32 base: issue 16's bar


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantize_keeps_every_weight_within_half_a_step_and_int4_packs_two_per_byte(mode):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 256, 6)).astype(np.float32) * rng.uniform(0.1, 4, size=(3, 1, 6))
    q, scale = quant.quantize(w, (1,), mode)
    assert q.dtype == (np.int8 if mode == "int8" else np.uint8)
    assert q.shape == ((3, 256, 6) if mode == "int8" else (3, 256, 3))
    # A scale per output channel and group of 64 along the contracted axis.
    assert scale.shape == (3, 4, 6)
    back = np.asarray(quant.dequantize(jnp.asarray(q), jnp.asarray(scale), (1,), mode, jnp.float32))
    step = np.repeat(scale, 256 // scale.shape[1], axis=1)
    assert np.all(np.abs(back - w) <= step / 2 + 1e-6)
    # Values on the grid come back exactly, the most negative level included (sign-extended nibbles).
    levels = np.arange(-7, 8) if mode == "int4" else np.arange(-127, 128)
    grid = (rng.choice(levels, size=(2, 64, 8)).astype(np.float32)) * 0.5
    grid[:, 0, :] = levels.max() * 0.5  # each channel's absmax is exactly the top level
    qg, sg = quant.quantize(grid, (1,), mode)
    np.testing.assert_array_equal(np.asarray(quant.dequantize(jnp.asarray(qg), jnp.asarray(sg), (1,), mode,
                                                              jnp.float32)), grid)


@pytest.mark.parametrize("name", ["tiny_gemma", "tiny_gemma2", "tiny_gemma3", "tiny_gemma4_moe"])
@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.slow
def test_a_quantized_model_computes_with_its_dequantized_weights_in_a_fraction_of_the_bytes(name, mode):
    lora = LoRAConfig(rank=2, targets=("q", "v", "down"))
    # Experts 64 wide: the tiny config's 16 would spend a quarter of their int8 bytes on scales
    # (one per output channel below a 64-value group), which no real model does.
    cfg, rt = get_config(name, **({"expert_mlp_dim": 64} if "moe" in name else {})), Runtime(param_dtype="float32")
    base = frozen_params(build_model(cfg, runtime=rt, lora=lora, rngs=nnx.Rngs(0)))
    qm = from_params(cfg, base, runtime=rt.replace(base_quant=mode), lora=lora)
    stored = {k: v for k, v in frozen_params(qm).items()}
    assert set(stored) == set(base)  # the exchange format stays the float one
    fm = from_params(cfg, stored, runtime=rt, lora=lora)  # a float model of exactly the dequantized weights
    tokens = jnp.asarray(np.random.default_rng(1).integers(5, cfg.vocab_size, size=(2, 20)), jnp.int32)
    np.testing.assert_allclose(np.asarray(qm(tokens)), np.asarray(fm(tokens)), atol=1e-5, rtol=0)
    q_bytes = sum(v[...].nbytes for _, v in nnx.to_flat_state(nnx.state(qm, FROZEN_FILTER)))
    f_bytes = sum(v.nbytes for v in base.values())
    assert q_bytes <= MAX_BYTES[mode] * f_bytes, q_bytes / f_bytes
    # Every projection and the embedding are stored quantized; norms stay float.
    kinds = {str(p[-1]): v[...].dtype for p, v in nnx.to_flat_state(nnx.state(qm, FROZEN_FILTER))}
    stored = jnp.int8 if mode == "int8" else jnp.uint8
    assert kinds["kernel"] == kinds["input_embedding"] == stored
    assert kinds["scale"] == jnp.float32
    if cfg.num_experts:  # the stacked experts too: nearly all of a mixture-of-experts model's bytes
        assert kinds["gate_proj"] == kinds["up_proj"] == kinds["down_proj"] == stored


def test_base_quant_is_checked_where_it_is_given():
    from toolkit.classifier import AgileClassifier
    from toolkit.config import ConfigError, ModelSection, from_dict

    with pytest.raises(ValueError, match="model.base_quant: got 'int3'; must be none, int8 or int4"):
        AgileClassifier(LABELS, base_quant="int3")
    with pytest.raises(ConfigError, match="model.base_quant.*none, int8 or int4"):
        from_dict(ModelSection, {"base_quant": "fp8"})
    with pytest.raises(ValueError, match="base_quant 'int3' is not one of none, int8, int4"):
        Runtime(base_quant="int3")


@pytest.mark.slow
def test_an_int4_base_classifier_trains_reloads_and_exports_to_keras_hub(tmp_path):
    from test_export import TASKS, _keras_scores, _spec, _texts
    from toolkit.classifier import AgileClassifier
    from toolkit.export import export

    preset = kf.make_preset("gemma3", tmp_path)
    clf = AgileClassifier(LABELS, model=str(preset), verbalizers=VERBALIZERS, prompt={"instructions": "Classify"},
                          max_length=96, progress=False, param_dtype="float32", base_quant="int4",
                          lora={"rank": 4, "alpha": 8, "targets": ["q", "v", "o", "up", "down"]},
                          train={"epochs": 2, "batch_size": 8, "learning_rate": 3e-2})
    texts, labels = spam_ham(24)
    before = clf.set_params(zero_shot=True).predict_proba(texts)
    clf.fit(texts, labels)
    frozen = clf._parts.frozen
    assert any(x.dtype == jnp.uint8 for x in jax.tree.leaves(frozen))  # it trained on the int4 base
    probs = clf.predict_proba(texts)
    assert np.abs(probs - before).max() > 1e-3  # the adapters moved the scores
    saved = clf.save(tmp_path / "classifier")
    again = AgileClassifier.load(saved, progress=False)
    assert again.base_quant == "int4"
    np.testing.assert_allclose(again.predict_proba(texts), probs, atol=1e-6, rtol=0)
    # The merged export holds dequantized float weights; keras-hub scores them like our int4 model.
    out = export(saved, tmp_path / "keras_preset", format="keras-preset")
    probe = _texts(12, 3)
    theirs = _keras_scores(_spec(clf, probe, preset=str(out), task=TASKS["gemma3"]), tmp_path)
    np.testing.assert_allclose(np.array(theirs["probs"]), clf.predict_proba(probe), atol=1e-4, rtol=0)
