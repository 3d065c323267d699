"""The one train step and the scoring step, on a tiny random Gemma."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import loss_and_logits

from toolkit.config import TrainConfig
from toolkit.train.callbacks import Callback
from toolkit.models.configs import Runtime, get_config
from toolkit.models.gemma import Gemma
from toolkit.models.lora import LoRAConfig
from toolkit.train.loop import fit, make_optimizer, place_parts, predict_proba
from toolkit.train.mesh import make_mesh
from toolkit.train.step import make_head, make_score_step, make_train_step, split_model

CFG = get_config("tiny_gemma2")
RT = Runtime(param_dtype="float32")
CLASS_IDS = jnp.array([5, 9, 11])


def _parts(targets=("q", "v", "up"), dropout=0.0):
    # alpha = rank (scale 1): the float tolerances of these equivalence tests were set at that scale
    lora = LoRAConfig(rank=4, alpha=None, dropout=dropout, targets=targets)
    return split_model(Gemma(CFG, runtime=RT, lora=lora, rngs=nnx.Rngs(0)))


def _placed(parts):
    return place_parts(parts, make_mesh(devices=jax.devices()[:1]), CFG, RT)


def _batch(n=6, t=10, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, t + 1, size=n)
    tokens = rng.integers(20, 500, size=(n, t)) * (np.arange(t)[None] < lengths[:, None])
    return {"tokens": jnp.asarray(tokens, jnp.int32), "lengths": jnp.asarray(lengths, jnp.int32),
            "labels": jnp.asarray(rng.integers(0, 3, size=n), jnp.int32), "weights": jnp.ones(n)}


@pytest.mark.slow
def test_optimizer_state_holds_only_lora_params():
    parts = _parts()
    tx, _ = make_optimizer(TrainConfig(), 10)
    state = tx.init(parts.lora)
    lora_bytes = sum(x.nbytes for x in jax.tree.leaves(parts.lora))
    adam_bytes = sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim > 0)
    assert adam_bytes == 2 * lora_bytes  # Adam's mu and nu, nothing for the frozen base


def test_steps_lower_the_loss_and_leave_the_base_untouched():
    parts = _parts()
    frozen_before = jax.tree.map(np.asarray, parts.frozen)
    tx = optax.adam(1e-2)
    step = make_train_step(parts.train_graph, tx)
    lora, opt, rest = jax.tree.map(jnp.copy, parts.lora), tx.init(parts.lora), jax.tree.map(jnp.copy, parts.rest)
    batch = _batch()
    losses = []
    for _ in range(15):
        lora, opt, rest, m = step(lora, opt, parts.frozen, rest, batch, CLASS_IDS, None)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), frozen_before, parts.frozen))


@pytest.mark.slow
def test_filler_rows_have_no_effect_on_loss():
    parts = _parts()
    model = nnx.merge(parts.eval_graph, parts.lora, parts.frozen, parts.rest)
    b = _batch(4)
    padded = {k: jnp.concatenate([v, v[:2] * (0 if k == "weights" else 1)]) for k, v in b.items()}
    np.testing.assert_allclose(loss_and_logits(model, b, CLASS_IDS)[0], loss_and_logits(model, padded, CLASS_IDS)[0],
                               rtol=1e-6)


@pytest.mark.slow
def test_lm_loss_is_full_vocabulary_cross_entropy_at_the_label_position():
    parts = _parts()
    model = nnx.merge(parts.eval_graph, parts.lora, parts.frozen, parts.rest)
    b = _batch(3)
    value, logits = loss_and_logits(model, b, CLASS_IDS, loss="lm")
    full = model(b["tokens"], jnp.arange(10)[None] < b["lengths"][:, None])
    last = full[jnp.arange(3), b["lengths"] - 1]
    expected = -jax.nn.log_softmax(last)[jnp.arange(3), CLASS_IDS[b["labels"]]].mean()
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(logits, last[:, CLASS_IDS], rtol=1e-5)
    assert loss_and_logits(model, b, CLASS_IDS, loss="class")[0] < value  # fewer competitors


@pytest.mark.slow
def test_score_step_is_softmax_of_class_rows_at_the_last_real_token():
    parts = _parts()
    score = make_score_step(parts.eval_graph)
    b = _batch(5)
    probs = score(parts.lora, parts.frozen, parts.rest, b, CLASS_IDS, None)[:, 0]
    model = nnx.merge(parts.eval_graph, parts.lora, parts.frozen, parts.rest)
    for i in range(5):
        n = int(b["lengths"][i])
        alone = model(b["tokens"][i:i + 1, :n])[0, -1, CLASS_IDS]
        np.testing.assert_allclose(probs[i], jax.nn.softmax(alone), atol=1e-5)


def test_dropout_is_on_in_training_and_off_when_scoring():
    parts = _parts(dropout=0.5)
    b = _batch(2)
    train_model = nnx.merge(parts.train_graph, parts.lora, parts.frozen, parts.rest)
    eval_model = nnx.merge(parts.eval_graph, parts.lora, parts.frozen, parts.rest)
    _with_b = lambda m: nnx.state(m, nnx.LoRAParam)  # noqa: E731
    for path, v in nnx.to_flat_state(_with_b(train_model)):
        if path[-1] == "lora_b":
            v.set_value(jnp.ones_like(v.value))
    a1 = loss_and_logits(eval_model, b, CLASS_IDS)[1]
    a2 = loss_and_logits(eval_model, b, CLASS_IDS)[1]
    np.testing.assert_array_equal(a1, a2)
    t1 = loss_and_logits(train_model, b, CLASS_IDS)[1]
    t2 = loss_and_logits(train_model, b, CLASS_IDS)[1]
    assert not np.allclose(t1, t2)


@pytest.mark.slow
def test_fit_learns_a_separable_task_and_reports_history():
    parts = _placed(_parts(targets=("q", "v", "o", "up", "down")))
    rng = np.random.default_rng(1)
    ids = [[2] + list(rng.integers(20, 60 if i % 2 else 400, size=int(rng.integers(4, 12)))) + [7] for i in range(48)]
    y = np.array([i % 2 for i in range(48)])
    lora, hist = fit(parts, ids, y, [5, 9], TrainConfig(epochs=6, batch_size=8, learning_rate=2e-2),
                     max_length=16, progress=False)
    assert len(hist) == 6 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    probs = predict_proba(parts, lora, ids, [5, 9], batch_size=16, max_length=16)
    assert probs.shape == (48, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y).mean() >= 0.9


@pytest.mark.slow
def test_the_next_fit_of_the_same_architecture_compiles_no_new_step():
    """An agile round refits the same architecture with more labels and maybe another learning
    rate, through a new model: its train and score steps are the ones this process already
    compiled (JAX reports every compilation, a persistent-cache hit too)."""
    compiled = []

    def listen(event, duration, **kw):
        if event.endswith("backend_compile_duration"):
            compiled.append(kw.get("fun_name"))

    rng = np.random.default_rng(3)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for n, lr in ((16, 1e-2), (40, 1e-3)):
            placed = _placed(_parts())  # a new model, as a new classifier builds one
            ids, y = [[2] + list(rng.integers(20, 400, size=8)) + [7] for _ in range(n)], np.arange(n) % 2
            lora, hist = fit(placed, ids, y, [5, 9], TrainConfig(epochs=1, batch_size=8, learning_rate=lr),
                             max_length=16, progress=False)
            probs = predict_proba(placed, lora, ids, [5, 9], batch_size=16, max_length=16)
            assert probs.shape == (n, 2) and np.isfinite(hist[-1]["train_loss"])
            if n == 16:
                first = len(compiled)
                assert {"jit(step)", "jit(score)"} <= set(compiled)
        assert not {"jit(step)", "jit(score)"} & set(compiled[first:]), compiled[first:]
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message():
    parts = _placed(_parts())
    ids = [[2, 30, 31, 7]] * 8
    with pytest.raises(FloatingPointError, match="learning_rate"):
        cfg = TrainConfig(epochs=1, batch_size=4)
        object.__setattr__(cfg, "learning_rate", float("nan"))  # past the config's own check: the guard's turn
        fit(parts, ids, np.zeros(8, int), [5, 9], cfg,
            max_length=8, progress=False)


@pytest.mark.slow
def test_steps_between_log_points_never_read_from_the_device():
    """Metrics stay on device between reads (every `log_every_steps` and at the epoch's
    end), so the host never waits for a step before dispatching the next. The
    transfer guard enforces it on GPU/TPU (JAX does not guard CPU reads); on any
    backend the loop counts its reads."""
    parts = _placed(_parts())
    rng = np.random.default_rng(0)
    ids = [[2] + list(rng.integers(20, 400, size=int(rng.integers(4, 12)))) + [7] for _ in range(96)]
    guarded = []

    class Guard(Callback):
        def on_batch(self, fit, batch):  # called before step `fit.step + 1` is dispatched
            if fit.step == 4:  # right after the read at step 4
                jax.config.update("jax_transfer_guard_device_to_host", "disallow")
            if fit.step == 7:  # before the 8th step, whose read follows it
                jax.config.update("jax_transfer_guard_device_to_host", "allow")
            if 4 < fit.step < 7:
                guarded.append(fit.step)

    try:
        _, hist = fit(parts, ids, np.array([i % 2 for i in range(96)]), [5, 9],
                      TrainConfig(epochs=1, batch_size=8, log_every_steps=4), max_length=16, progress=False,
                      callbacks=[Guard()])
    finally:
        jax.config.update("jax_transfer_guard_device_to_host", "allow")
    steps = hist[0]["step"]
    assert guarded == [5, 6] and steps > 8 and np.isfinite(hist[0]["train_loss"])
    assert hist[0]["host_reads"] == -(-steps // 4)  # one per log point (the last at the epoch's end)


@pytest.mark.slow
def test_scoring_and_loss_with_a_shared_head_equal_the_full_prompt():
    parts = _parts()
    head = [2, 30, 31, 32, 33]
    rows = [[40, 41, 42], [43, 44], [45, 46, 47, 48, 49, 50]]
    full = [head + r for r in rows]
    placed = _placed(parts)
    p_full = predict_proba(placed, parts.lora, full, [5, 9], batch_size=4, max_length=16)
    p_head = predict_proba(placed, parts.lora, rows, [5, 9], batch_size=4, max_length=16, head=head)
    np.testing.assert_allclose(p_head, p_full, atol=1e-5)
    model = nnx.merge(parts.eval_graph, parts.lora, parts.frozen, parts.rest)
    pad = lambda xs, n: jnp.asarray([x + [0] * (n - len(x)) for x in xs], jnp.int32)  # noqa: E731
    common = {"labels": jnp.array([0, 1, 0]), "weights": jnp.ones(3)}
    a = loss_and_logits(model, {"tokens": pad(full, 11), "lengths": jnp.array([8, 7, 11]), **common}, CLASS_IDS[:2])
    b = loss_and_logits(model, {"tokens": pad(rows, 6), "lengths": jnp.array([3, 2, 6]), **common}, CLASS_IDS[:2],
                        head=make_head(head))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)


def _run_steps(parts, batch, n=3, accum=1):
    # SGD: linear in the gradients, so float-rounding noise in near-zero gradient entries is
    # not blown up to learning-rate size as Adam's normalisation does.
    tx = optax.sgd(0.5)
    step = make_train_step(parts.train_graph, tx, accum_steps=accum)
    lora, opt, rest = jax.tree.map(jnp.copy, parts.lora), tx.init(parts.lora), jax.tree.map(jnp.copy, parts.rest)
    losses = []
    for _ in range(n):
        lora, opt, rest, m = step(lora, opt, parts.frozen, rest, batch, CLASS_IDS, None)
        losses.append(float(m["loss"]))
    return lora, losses


@pytest.mark.slow
def test_lora_dropout_trains_and_draws_new_masks_each_step():
    parts = _parts(dropout=0.3)
    batch = _batch()
    tx = optax.sgd(0.0)  # no update: any change in loss comes from the dropout masks
    step = make_train_step(parts.train_graph, tx)
    lora, opt, rest = jax.tree.map(jnp.copy, parts.lora), tx.init(parts.lora), jax.tree.map(jnp.copy, parts.rest)
    # B starts at zero, so dropout on the adapter input changes nothing until B moves.
    lora = jax.tree.map(lambda x: x + 0.05, lora)
    losses = []
    for _ in range(3):
        lora, opt, rest, m = step(lora, opt, parts.frozen, rest, batch, CLASS_IDS, None)
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all() and len(set(losses)) == 3


@pytest.mark.slow
def test_gradient_accumulation_equals_one_large_batch():
    batch = _batch(n=8)
    full, l_full = _run_steps(_parts(), batch, accum=1)
    acc, l_acc = _run_steps(_parts(), batch, accum=4)
    np.testing.assert_allclose(l_acc, l_full, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(acc), jax.tree.leaves(full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("remat", ["dots", "full"])
@pytest.mark.slow
def test_remat_changes_memory_not_results(remat):
    batch = _batch()
    ref, l_ref = _run_steps(_parts(dropout=0.2), batch)
    parts = split_model(Gemma(CFG, runtime=RT.replace(remat=remat), lora=LoRAConfig(rank=4, alpha=None, dropout=0.2, targets=("q", "v", "up")),
                              rngs=nnx.Rngs(0)))
    got, l_got = _run_steps(parts, batch)
    np.testing.assert_allclose(l_got, l_ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_shared_head_gets_one_lora_dropout_mask_per_batch_and_rows_their_own(monkeypatch):
    """LoRAConfig's documented trade-off: the instruction head runs once per batch, so its
    adapters' inputs get one dropout mask (shape (1, P, .)), the rows' tokens one each;
    and the masks are live (a second draw changes the head's keys)."""
    model = Gemma(CFG, lora=LoRAConfig(rank=4, alpha=None, dropout=0.5, targets=("q", "v", "up")),
                  rngs=nnx.Rngs(0))
    for path, leaf in nnx.iter_graph(model):  # B = 0 would hide the adapters' inputs
        if path and path[-1] == "lora_b":
            leaf[...] = jnp.full(leaf.shape, 0.1, leaf.dtype)
    shapes = []
    real_call = nnx.Dropout.__call__

    def spy(self, x, *a, **kw):
        out = real_call(self, x, *a, **kw)
        if not self.deterministic:
            shapes.append(x.shape[0])  # rows the mask covers (traced in the scan: shapes only)
        return out

    monkeypatch.setattr(nnx.Dropout, "__call__", spy)
    batch = _batch(n=4)
    head = make_head([2, 40, 41, 42, 43])
    model.train()
    loss_and_logits(model, batch, CLASS_IDS, head=head)
    assert shapes and set(shapes) == {1, 4}, shapes  # the head: 1 mask; the rows: 4
    k1 = model.prefix(jnp.asarray([2, 40, 41, 42, 43]))[0]
    k2 = model.prefix(jnp.asarray([2, 40, 41, 42, 43]))[0]
    assert not np.allclose(k1, k2)  # a fresh mask per draw
    model.eval()
    shapes.clear()
    np.testing.assert_array_equal(model.prefix(jnp.asarray([2, 40, 41])), model.prefix(jnp.asarray([2, 40, 41])))
    assert shapes == []  # scoring drops nothing


@pytest.mark.parametrize("total", [1, 2, 4, 10, 40])
def test_every_schedule_trains_from_its_first_step_when_too_short_to_warm_up(total):
    """A fit of fewer steps than 1 / warmup_ratio (8 examples, batch 8) has no warm-up: its
    first step is at the full rate, not 0 (it used to fail inside optax at 1 step)."""
    from toolkit.config import TrainConfig
    from toolkit.train.loop import make_schedule

    cfg = TrainConfig(learning_rate=0.01, warmup_ratio=0.1)
    rates = [float(make_schedule(cfg, total)(i)) for i in range(total)]
    if total * cfg.warmup_ratio < 0.5:
        assert rates[0] == pytest.approx(0.01)
    else:
        assert rates[0] == 0.0 and max(rates) == pytest.approx(0.01, rel=0.3)
    assert all(0 <= r <= 0.01 + 1e-9 for r in rates) and (total == 1 or rates[-1] < rates[0] or rates[0] == 0.0)


def test_one_train_step_program_serves_every_learning_rate_and_number_of_steps():
    """The schedule's step counts are optimizer state, like the learning rate: a fit of 5 steps
    and one of 50 (an agile round with more labels, the next fold) lower to the same program,
    so the second finds the first's compilation, yet each follows its own schedule."""
    parts = _parts()
    batch, classes = _batch(), CLASS_IDS
    texts, states = [], []
    for lr, total in ((1e-2, 5), (1e-3, 50)):
        tx, schedule = make_optimizer(TrainConfig(learning_rate=lr, warmup_ratio=0.2), total)
        opt = tx.init(parts.lora)
        step = make_train_step(parts.train_graph, tx)
        texts.append(step.lower(parts.lora, opt, parts.frozen, parts.rest, batch, classes, None).as_text())
        states.append((opt, schedule))
    assert texts[0] == texts[1]
    (opt5, sched5), (opt50, sched50) = states
    assert int(opt5[2].total) == 5 and int(opt50[2].total) == 50 and int(opt50[2].warmup) == 10
    # the rate each fit's history logs is the one its optimizer applies: warm-up, then decay to 0
    assert float(sched5(1)) == pytest.approx(1e-2) and float(sched50(1)) == pytest.approx(1e-4)
    assert float(sched5(5)) == pytest.approx(0.0, abs=1e-12) and float(sched50(30)) > 0
