"""Early stopping (`train.early_stopping`): the fit ends once the eval metric stops improving
and leaves exactly the best epoch's adapters, the ones that epoch's checkpoint holds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import LABELS, ROOT, VERBALIZERS, spam_ham
from toolkit.classifier import AgileClassifier
from toolkit.config import CheckpointSection, ConfigError, load_config
from toolkit.train.callbacks import Callback, Checkpointing
from toolkit.train.checkpoint import Checkpointer


class Scripted(Callback):
    """Sets the epoch's eval metric from a script, so which epoch is best is known, and keeps
    each epoch's trained state (the test's ground truth)."""

    def __init__(self, values: list[float]):
        self.values, self.states = values, {}

    def on_epoch_end(self, fit, record):
        record["eval_roc_auc"] = self.values[record["epoch"] - 1]
        self.states[record["epoch"]] = (fit.step, jax.tree.map(jnp.copy, fit.tree()))


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _classifier(**stopping) -> AgileClassifier:
    return AgileClassifier(LABELS, model="random:tiny_gemma", verbalizers=VERBALIZERS, max_length=48,
                           progress=False, param_dtype="float32",
                           train={"epochs": 5, "batch_size": 8, "learning_rate": 0.02,
                                  "early_stopping": {"metric": "eval_roc_auc", **stopping}})


@pytest.mark.slow
def test_the_fit_stops_after_patience_and_keeps_the_best_epochs_adapters(tmp_path):
    texts, labels = spam_ham(24)
    script = Scripted([0.6, 0.8, 0.7, 0.65, 0.9])  # best at epoch 2; with patience 2 it stops after epoch 4
    clf = _classifier(patience=2, min_delta=0.0)
    keep_all = Checkpointing(Checkpointer(tmp_path / "ck", CheckpointSection(keep=10)))
    clf.fit(texts, labels, eval_texts=texts[:8], eval_labels=labels[:8], callbacks=[script, keep_all])
    assert [h["epoch"] for h in clf.history] == [1, 2, 3, 4]  # epoch 5 (0.9) never ran
    last = clf.history[-1]
    assert last["kept_epoch"] == 2
    assert "best eval_roc_auc 0.8000 at epoch 2" in last["kept_reason"] and "for 2 epoch(s)" in last["kept_reason"]
    ours = _flat(clf._lora)
    step, at_best = script.states[2]
    for name, value in _flat(at_best["lora"]).items():
        np.testing.assert_array_equal(ours[name], value)
    assert any(not np.array_equal(ours[n], v) for n, v in _flat(script.states[4][1]["lora"]).items())
    # ... and they are the adapters that epoch's checkpoint holds.
    ck = Checkpointer(tmp_path / "ck", CheckpointSection(keep=10))
    try:
        saved, meta = ck.restore(at_best, step=step)
    finally:
        ck.close()
    assert meta["epoch"] == 2
    for name, value in _flat(saved["lora"]).items():
        np.testing.assert_array_equal(ours[name], value)


@pytest.mark.slow
def test_min_delta_counts_a_small_gain_as_no_gain():
    texts, labels = spam_ham(16)
    clf = _classifier(patience=1, min_delta=0.05)
    clf.fit(texts, labels, eval_texts=texts[:8], eval_labels=labels[:8], callbacks=[Scripted([0.7, 0.72, 0.9])])
    assert len(clf.history) == 2 and clf.history[-1]["kept_epoch"] == 1


@pytest.mark.slow
def test_early_stopping_needs_eval_rows():
    texts, labels = spam_ham(16)
    with pytest.raises(ValueError, match="train.early_stopping needs rows to score each epoch"):
        _classifier().fit(texts, labels)
    with pytest.raises(ConfigError, match="train.early_stopping: .* data.validation_size > 0"):
        load_config(ROOT / "sweeps" / "ethos_270m.yaml", ["train.early_stopping={patience: 2}",
                                                           "data.validation_size=0"])
    with pytest.raises(ConfigError, match="train.early_stopping.patience"):
        load_config(ROOT / "sweeps" / "ethos_270m.yaml", ["train.early_stopping={patience: 0}"])
