"""Compile once: the layer-scanned model equals the unrolled one, packed batches equal
unpacked ones, and one compiled step serves every prompt and label set."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import logits_of, loss_and_logits

from toolkit.config import TrainConfig
from toolkit.data import packing
from toolkit.data.pipeline import make_packed_epoch, packed_steps
from toolkit.models import layout
from toolkit.models.configs import Runtime, get_config
from toolkit.models.build import from_params
from toolkit.models.gemma import Gemma, flat_state
from toolkit.models.lora import LoRAConfig
from toolkit.train.loop import fit, place_parts, predict_proba
from toolkit.train.mesh import make_mesh
from toolkit.train.step import make_head, make_train_step, split_model
from toolkit.weights.loader import random_init

FP32 = Runtime(param_dtype="float32", dtype="float32")
LORA = LoRAConfig(rank=3, alpha=6.0)
CLASS_IDS = jnp.array([5, 9, 11])


# Gemma 4 scans over its repeating block of layer types: the 2B-like config with a local/global
# block of 2 and 8 layers, 4 of them K/V-shared, has two blocks before and two after its shared
# tail starts (both regions scanned), with fewer layers to compile than blocks of 3 would need.
SCAN_CONFIGS = {"tiny_gemma4": dict(num_layers=8, num_kv_shared_layers=4, sliding_window_pattern=2)}


def _pair(name, runtime=FP32):
    """The same weights (random adapters included) as a scanned and an unrolled model."""
    cfg = get_config(name, **SCAN_CONFIGS.get(name, {}))
    scanned = random_init(cfg, LORA, runtime=runtime)  # one compiled init, not one per shape
    for path, v in nnx.to_flat_state(nnx.state(scanned, nnx.LoRAParam)):
        if path[-1] == "lora_b":  # adapters stay fp32 whatever the base
            v.set_value((jax.random.normal(jax.random.key(3), v.shape) * 0.1).astype(v[...].dtype))
    params = {k: np.asarray(v) for k, v in flat_state(scanned, nnx.Param).items()}
    unrolled = from_params(cfg, params, runtime=runtime.replace(scan_layers=False), lora=LORA)
    return scanned, unrolled


def _batch(n=5, t=9, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, t + 1, size=n)
    tokens = rng.integers(20, 500, size=(n, t)) * (np.arange(t)[None] < lengths[:, None])
    return {"tokens": jnp.asarray(tokens, jnp.int32), "lengths": jnp.asarray(lengths, jnp.int32),
            "labels": jnp.asarray(rng.integers(0, 3, size=n), jnp.int32), "weights": jnp.ones(n)}


@nnx.jit
def _loss_logits_grads(model, batch, head):
    """One compiled program per model and shape: eager op-by-op dispatch of a whole
    Gemma forward and backward costs the suite tens of seconds."""
    def loss(m):
        return loss_and_logits(m, batch, CLASS_IDS, head=head)

    (value, logits), grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam), has_aux=True)(model)
    return value, logits, grads


def _run(model, batch, head=None):
    """(loss, logits, LoRA gradients by exchange name)."""
    value, logits, grads = _loss_logits_grads(model, batch, head)
    flat = {".".join(map(str, p)): np.asarray(g[...]) for p, g in nnx.to_flat_state(grads)}
    return value, logits, layout.to_exchange(flat, model.stacking)


def _close(a, b, rel=1e-5):
    """Equal to `rel` of the larger magnitude (fp32 sums in another order)."""
    scale = max(float(np.abs(b).max()), 1e-6)
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_gemma", "tiny_gemma2", "tiny_gemma3", "tiny_gemma4"])
def test_scanned_equals_unrolled_logits_loss_and_lora_gradients(name):
    # Gemma 4's block scan runs in fp64 (results are cast to the fp32 adapters' dtype): in
    # fp32 the 12-layer config's rounding alone reaches 3e-5, which would hide a real error.
    if get_config(name).family == "gemma4":
        with jax.enable_x64(True):
            _scanned_equals_unrolled(name, Runtime(param_dtype="float64", dtype="float64"), rel=1e-6)
    else:
        _scanned_equals_unrolled(name, FP32, rel=1e-5)


def _scanned_equals_unrolled(name, runtime, rel):
    scanned, unrolled = _pair(name, runtime)
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(scanned))}
    if scanned.config.family == "gemma4":  # position 1 of the first block group: layers 1 and 3
        assert "blocks.0.1.attn.q_proj.kernel" in names and not any(n.startswith("layers.") for n in names)
    else:
        assert "layers.attn.q_proj.kernel" in names
    tokens = jnp.array([[3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    _close(logits_of(scanned, tokens), logits_of(unrolled, tokens), rel)
    b, head = _batch(), make_head([2, 30, 31, 32])
    for h in (None, head):
        (ls, logits_s, gs), (lu, logits_u, gu) = _run(scanned, b, h), _run(unrolled, b, h)
        _close(ls, lu, rel)
        _close(logits_s, logits_u, rel)
        assert set(gs) == set(gu) == set(flat_state(unrolled, nnx.LoRAParam))
        for k in gs:
            _close(gs[k], gu[k], rel=10 * rel)


@pytest.mark.slow
def test_exchange_format_round_trips_through_the_scanned_layout():
    scanned, unrolled = _pair("tiny_gemma3")
    a, b = flat_state(scanned, nnx.Param), flat_state(unrolled, nnx.Param)
    assert set(a) == set(b) and "layers.5.mlp.down_proj.lora_b" in a
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def _packed_from(batch, width):
    """Pack an unpacked batch's rows with the real packer."""
    lengths = np.asarray(batch["lengths"])
    ids = [list(np.asarray(batch["tokens"][i, :n])) for i, n in enumerate(lengths)]
    shape = packing.PackShape(rows=2, width=width)
    (b,) = list(make_packed_epoch(ids, np.asarray(batch["labels"]), shape, shuffle=False))
    assert (b.segment_ids.max(1) > 1).any()  # several examples really share a row
    return {k: jnp.asarray(v) for k, v in b.device_dict().items()}, b.index


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_gemma2", "tiny_gemma3"])
def test_packed_batches_equal_unpacked_loss_gradients_and_scores(name):
    model, _ = _pair(name)
    b = _batch(n=6, t=9, seed=1)
    packed, index = _packed_from(b, width=32)
    head = make_head([2, 30, 31])
    for h in (None, head):
        (lu, logits_u, gu), (lp, logits_p, gp) = _run(model, b, h), _run(model, packed, h)
        _close(lp, lu)
        real = index.reshape(-1) >= 0
        _close(np.asarray(logits_p)[real], np.asarray(logits_u)[index.reshape(-1)[real]])
        for k in gu:
            _close(gp[k], gu[k])


@pytest.mark.slow
def test_packed_and_unpacked_fit_and_predict_agree():
    placed = place_parts(split_model(Gemma(get_config("tiny_gemma3"), runtime=FP32, lora=LORA, rngs=nnx.Rngs(0))),
                         make_mesh(devices=jax.devices()[:1]))
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(20, 400, size=int(rng.integers(3, 14)))) for _ in range(37)]
    head = [2, 30, 31]
    pp = predict_proba(placed, placed.parts.lora, ids, [5, 9], batch_size=8, max_length=32, head=head)
    pu = predict_proba(placed, placed.parts.lora, ids, [5, 9], batch_size=8, max_length=32, head=head, packing=False)
    np.testing.assert_allclose(pp, pu, atol=1e-5)
    y = np.array([i % 2 for i in range(37)])
    for flag in (True, False):
        lora, hist = fit(placed, ids, y, [5, 9], TrainConfig(epochs=2, batch_size=8, packing=flag), max_length=32,
                         progress=False, head=head)
        assert len(hist) == 2 and np.isfinite(hist[-1]["train_loss"])


def test_packing_plan_keeps_every_example_once_within_the_budget():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(1, 60, size=200))
    shape = packing.train_shape(lengths, batch_size=8, width=64, row_multiple=4)
    assert shape.padded_rows % 4 == 0 and shape.padded_rows >= shape.rows
    assert shape.rows == packing.train_shape(lengths, batch_size=8, width=64).rows  # the plan ignores the mesh
    order = packing.epoch_order(200, epoch=1, seed=3, shuffle=True)
    steps = packing.plan(order, lengths, shape)
    seen = [i for s in steps for r in s for i in r]
    assert sorted(seen) == list(range(200))
    assert all(sum(lengths[i] for i in r) <= 64 and len(r) <= shape.segments for s in steps for r in s)
    assert len(steps) == packed_steps(lengths, shape, epoch=1, seed=3)
    # about batch_size examples a step on average
    assert 6 <= 200 / len(steps) <= 10
    with pytest.raises(ValueError, match="row width"):
        packing.plan([0], [65], shape)


def test_packing_fills_a_gap_with_a_later_example_and_closes_a_step_past_the_lookahead():
    shape = packing.PackShape(rows=1, width=10)
    lengths = [6, 7, 4, 3]
    # without look-ahead the first misfit closes the step: 6 | 7 | 4+3
    assert packing.plan(range(4), lengths, shape, lookahead=0) == [[[0]], [[1]], [[2, 3]]]
    # with it, 4 fills the first step's gap and the waiting 7 opens the next: 6+4 | 7+3
    assert packing.plan(range(4), lengths, shape) == [[[0, 2]], [[1, 3]]]
    # a step closes once more than `lookahead` examples wait: with 1, the two 5s close it
    # before the 1 that would have filled it arrives; with the default it still gets there
    assert packing.plan(range(4), [9, 5, 5, 1], shape, lookahead=1) == [[[0]], [[1, 2]], [[3]]]
    assert packing.plan(range(4), [9, 5, 5, 1], shape) == [[[0, 3]], [[1, 2]]]


def test_packed_epochs_split_rows_between_hosts_and_resume_by_skipping():
    ids = [[i + 20] * (1 + i % 7) for i in range(40)]
    y = np.arange(40) % 2
    shape = packing.PackShape(rows=4, width=16)
    whole = list(make_packed_epoch(ids, y, shape, epoch=2, seed=1))
    halves = [list(make_packed_epoch(ids, y, shape, epoch=2, seed=1, process_index=p, process_count=2)) for p in (0, 1)]
    for w, a, b in zip(whole, *halves):
        np.testing.assert_array_equal(w.tokens, np.concatenate([a.tokens, b.tokens]))
        np.testing.assert_array_equal(w.index, np.concatenate([a.index, b.index]))
    resumed = list(make_packed_epoch(ids, y, shape, epoch=2, seed=1, skip_batches=2))
    np.testing.assert_array_equal(resumed[0].index, whole[2].index)


@pytest.mark.slow
def test_one_compiled_train_step_serves_every_prompt_and_label_set():
    parts = split_model(Gemma(get_config("tiny_gemma3"), runtime=FP32, lora=LORA, rngs=nnx.Rngs(0)))
    tx = optax.sgd(0.1)
    step = make_train_step(parts.train_graph, tx)
    lora, opt, rest = jax.tree.map(jnp.copy, parts.lora), tx.init(parts.lora), jax.tree.map(jnp.copy, parts.rest)
    b = _batch(n=4, seed=2)
    b = {**b, "labels": b["labels"] % 2}
    for head, classes in [([2, 30, 31], [5, 9]), ([2, 40, 41, 42, 43, 44], [7, 8]), ([2], [100, 200])]:
        lora, opt, rest, m = step(lora, opt, parts.frozen, rest, b, jnp.asarray(classes, jnp.int32), make_head(head))
        assert np.isfinite(float(m["loss"]))
    assert step._cache_size() == 1
