"""train.trainable=full: every weight trains on the same train step, with AdamW state for all."""

from __future__ import annotations

import numpy as np
import pytest

import keras_fixtures as kf
from conftest import LABELS, VERBALIZERS, spam_ham
from toolkit.classifier import AgileClassifier


def _clf(model: str, lr: float, **kw) -> AgileClassifier:
    return AgileClassifier(LABELS, model=model, verbalizers=VERBALIZERS, prompt={"instructions": "Classify"},
                           max_length=64, progress=False, param_dtype="float32",
                           train={"trainable": "full", "epochs": 2, "batch_size": 4, "learning_rate": lr,
                                  "warmup_ratio": 0.0, "weight_decay": 0.01}, **kw)


def _weights(clf: AgileClassifier) -> dict[str, np.ndarray]:
    from toolkit.models.gemma import frozen_params

    return frozen_params(clf._model())


@pytest.mark.slow
def test_full_with_a_zero_learning_rate_leaves_every_weight_unchanged():
    from toolkit.config import TrainConfig

    texts, labels = spam_ham(16)
    train = TrainConfig(trainable="full", epochs=2, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0,
                        weight_decay=0.01)
    object.__setattr__(train, "learning_rate", 0.0)  # users get an error for 0; the step must still be exact
    clf = _clf("random:tiny_gemma3", 1e-3).set_params(train=train)
    clf._ensure_model()
    assert not any(True for _ in __import__("jax").tree.leaves(clf._parts.frozen))  # nothing is frozen
    before = _weights(clf)
    clf.fit(texts, labels)
    after = _weights(clf)
    assert set(after) == set(before) and len(before) > 10
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


@pytest.mark.slow
def test_full_trains_every_weight_saves_reloads_and_exports_the_whole_model(tmp_path):
    from toolkit.export import ExportError, export

    preset = kf.make_preset("gemma3", tmp_path)
    texts, labels = spam_ham(16)
    clf = _clf(str(preset), 3e-3)
    clf._ensure_model()
    before = _weights(clf)
    clf.fit(texts, labels)
    after = _weights(clf)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert "embedder.input_embedding" in changed and any(".mlp." in k for k in changed)
    assert len(changed) >= 0.9 * len(before)  # every weight that gets a gradient moves
    assert clf.history[-1]["train_loss"] < clf.history[0]["train_loss"] + 1e-6
    probs = clf.predict_proba(texts)
    saved = clf.save(tmp_path / "clf")
    again = AgileClassifier.load(saved, progress=False)
    assert again.train_config.trainable == "full"
    np.testing.assert_allclose(again.predict_proba(texts), probs, atol=1e-6, rtol=0)
    with pytest.raises(ExportError, match="has no adapters"):
        export(saved, tmp_path / "lora", format="lora")
    assert not (tmp_path / "lora").exists()
    out = export(saved, tmp_path / "preset", format="keras-preset")
    np.testing.assert_allclose(AgileClassifier.load(out, progress=False).predict_proba(texts), probs, atol=1e-5, rtol=0)


def test_full_refuses_a_quantized_base():
    with pytest.raises(ValueError, match="trainable=full trains every weight.*base_quant='int8'"):
        _clf("random:tiny_gemma3", 1e-3, base_quant="int8")
