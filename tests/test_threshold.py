"""Operating points: a threshold chosen for a target precision / recall / F1, used by predict
and evaluate, saved with the classifier, and chosen in a run only on validation rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toolkit.classifier import AgileClassifier
from toolkit.config import ConfigError, RunConfig, from_dict
from toolkit.threshold import choose_threshold

SAVED = Path(__file__).parent / "data" / "saved_classifier_v1" / "classifier"


def _brute(y, s):
    """(threshold, precision, recall) at every distinct score."""
    out = []
    for t in np.unique(s):
        pred = s >= t
        tp = (pred & y).sum()
        out.append((t, tp / pred.sum(), tp / y.sum()))
    return out


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    return y, s


def test_target_precision_gives_the_most_recall_at_that_precision(scored):
    y, s = scored
    info = choose_threshold(y, s, target_precision=0.9)
    ok = [(t, p, r) for t, p, r in _brute(y, s) if p >= 0.9]
    best = max(ok, key=lambda x: (x[2], -x[0]))
    assert info["threshold"] == pytest.approx(best[0]) and info["precision"] >= 0.9
    assert info["recall"] == pytest.approx(best[2]) and info["rows"] == 400


def test_target_recall_and_f1(scored):
    y, s = scored
    info = choose_threshold(y, s, target_recall=0.8)
    ok = [(t, p, r) for t, p, r in _brute(y, s) if r >= 0.8]
    assert info["recall"] >= 0.8 and info["precision"] == pytest.approx(max(p for _, p, _ in ok))
    f1 = choose_threshold(y, s, metric="f1")
    assert f1["f1"] == pytest.approx(max(2 * p * r / (p + r) for _, p, r in _brute(y, s) if p + r))


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of"), ({"target_precision": 0.9, "metric": "f1"}, "exactly one of"),
    ({"target_precision": 1.5}, r"target_precision=1.5; must be a number in \(0, 1\]"),
    ({"metric": "auc"}, "only 'f1'"),
])
def test_impossible_targets_are_named(scored, kwargs, message):
    y, s = scored
    with pytest.raises(ValueError, match=message):
        choose_threshold(y, s, **kwargs)


def test_an_unreachable_precision_and_a_one_class_set_are_named():
    y, s = np.array([0, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])  # the top score is a negative
    with pytest.raises(ValueError, match=r"no threshold reaches precision 0.9 on these 4 rows \(the best is 0.667\)"):
        choose_threshold(y, s, target_precision=0.9)
    with pytest.raises(ValueError, match=r"the 4 tuning rows hold only one class"):
        choose_threshold(np.ones(4), s, metric="f1")


@pytest.mark.slow
def test_predict_evaluate_save_and_load_use_the_tuned_threshold(tmp_path):
    clf = AgileClassifier.load(SAVED, progress=False)
    texts = ["win a free prize", "lunch at noon", "click here now", "the report is fine", "free money",
             "see you tomorrow", "click to win", "meeting at noon"]
    labels = ["spam", "ham", "spam", "ham", "spam", "ham", "spam", "ham"]
    info = clf.tune_threshold(texts, labels, metric="f1", positive="spam")
    assert info["positive"] == "spam" and 0 < info["threshold"] < 1 and info["rows"] == 8
    p = clf.predict_proba(texts)[:, 0]
    expected = np.where(p >= info["threshold"], "spam", "ham")
    assert list(clf.predict(texts)) == list(expected)
    m = clf.evaluate(texts, labels, out_dir=tmp_path / "eval")
    assert m["threshold"] == info["threshold"] and m["positive"] == "spam"
    assert m["f1"] == pytest.approx(info["f1"])
    assert (tmp_path / "eval" / "pr_curve.png").stat().st_size > 0
    again = AgileClassifier.load(clf.save(tmp_path / "clf"), progress=False)
    assert again.threshold_ == clf.threshold_ and list(again.predict(texts)) == list(expected)
    clf.fit(texts, labels)  # new adapters: the old operating point no longer applies
    assert clf.threshold_ is None


def test_a_run_chooses_its_threshold_on_validation_rows_only():
    base = {"model": {"name": "random:tiny_gemma3"}, "classifier": {"threshold": {"target_precision": 0.9}}}
    with pytest.raises(ConfigError, match=r"classifier.threshold: .*data.validation_size > 0"):
        from_dict(RunConfig, base)
    cfg = from_dict(RunConfig, {**base, "data": {"validation_size": 40}})
    assert cfg.classifier.threshold.target_precision == 0.9
    with pytest.raises(ConfigError, match=r"classifier.threshold: .*exactly one of"):
        from_dict(RunConfig, {**base, "data": {"validation_size": 40},
                              "classifier": {"threshold": {"target_precision": 0.9, "metric": "f1"}}})
