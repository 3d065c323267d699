"""`train.trainable: head`: a linear head on the frozen model's last-token features, starting
as the zero-shot classifier, trained in seconds, saved and reloaded; export refuses it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import LABELS, VERBALIZERS, spam_ham
from toolkit.classifier import AgileClassifier
from toolkit.export import ExportError, export


def _clf(**train) -> AgileClassifier:
    return AgileClassifier(LABELS, model="random:tiny_gemma2", verbalizers=VERBALIZERS, max_length=48,
                           progress=False, param_dtype="float32",
                           train={"trainable": "head", "batch_size": 4, **train})


@pytest.fixture(scope="module")
def trained():
    texts, labels = spam_ham(24)
    clf = _clf(epochs=20, learning_rate=0.05, warmup_ratio=0.0).fit(
        texts, labels, eval_texts=texts[:8], eval_labels=labels[:8])
    return clf, texts, labels


@pytest.mark.slow
def test_a_head_that_has_not_moved_is_the_zero_shot_classifier():
    """With a learning rate of (almost) 0 the head stays at the class tokens' embedding rows,
    so its scores are the zero-shot classifier's (tiny_gemma2: with the final soft-cap)."""
    texts, labels = spam_ham(16)
    zero_shot = AgileClassifier(LABELS, model="random:tiny_gemma2", verbalizers=VERBALIZERS, max_length=48,
                                progress=False, param_dtype="float32", zero_shot=True)
    head = _clf(epochs=1, learning_rate=1e-12).fit(texts, labels)
    np.testing.assert_allclose(head.predict_proba(texts), zero_shot.predict_proba(texts), atol=1e-6)


@pytest.mark.slow
def test_the_head_learns_and_keeps_its_history(trained):
    clf, texts, labels = trained
    history = clf.history
    assert len(history) == 20 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert all("eval_roc_auc" in h for h in history)
    assert clf.evaluate(texts, labels)["accuracy"] > 0.9  # 3 spam and 3 ham phrasings, seen in training


@pytest.mark.slow
def test_a_saved_head_classifier_scores_the_same_and_cannot_be_merged_for_export(trained, tmp_path):
    clf, texts, _ = trained
    saved = clf.save(tmp_path / "head")
    assert (saved / "head.npz").is_file()
    again = AgileClassifier.load(saved, progress=False)
    np.testing.assert_allclose(again.predict_proba(texts), clf.predict_proba(texts), atol=1e-6)
    with pytest.raises(ExportError, match="train.trainable=head"):
        export(saved, tmp_path / "out", format="keras-preset")
    assert not (tmp_path / "out").exists()
