"""`AgileClassifier` is a scikit-learn estimator: clone, get/set_params, classes_,
NotFittedError, and the model-selection tools that need them (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import spam_ham

TINY = "random:tiny_gemma3"  # random weights, the packaged Gemma 3 tokenizer: no download


def _texts_labels(n: int = 24) -> tuple[list[str], np.ndarray]:
    texts, names = spam_ham(n)
    return texts, np.array(["yes" if v == "spam" else "no" for v in names])


def _clf(**kw):
    from toolkit.classifier import AgileClassifier

    base = dict(model=TINY, max_length=32, progress=False, prompt={"instructions": "Is it spam?"},
                train={"epochs": 1, "batch_size": 4, "learning_rate": 1e-3})
    return AgileClassifier(("no", "yes"), **{**base, **kw})


def test_clone_keeps_every_argument_as_given():
    from sklearn.base import clone

    from toolkit.config import TrainConfig
    from toolkit.multilabel import MultiLabelClassifier

    lora = {"rank": 4, "targets": ["q", "v"]}
    clf = _clf(lora=lora, verbalizers={"no": "no"}, remat="full", mesh={"data": 1})
    params = clf.get_params()
    assert params["lora"] is lora and params["remat"] == "full" and params["zero_shot"] is False
    again = clone(clf)
    assert again is not clf and again.get_params().keys() == params.keys()
    assert all(again.get_params()[k] == v for k, v in params.items())
    assert again.lora_config.rank == 4 and again.lora_config.targets == ("q", "v")
    assert again.train_config == TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3)

    # set_params re-derives the typed views (what fit reads)
    again.set_params(train={"learning_rate": 5e-4})
    assert again.train_config.learning_rate == 5e-4 and clf.train_config.learning_rate == 1e-3

    # the multi-label classifier passes the base's arguments through **kwargs, and clone still keeps them
    ml = MultiLabelClassifier(["a", "b"], model=TINY, lora=lora, max_length=48)
    ml2 = clone(ml)
    assert ml2.get_params()["lora"] == lora and ml2.max_length == 48 and ml2.category_names == ("a", "b")


@pytest.mark.slow
def test_scoring_before_fit_is_refused_unless_zero_shot_is_asked_for():
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    texts, _ = _texts_labels(4)
    with pytest.raises(NotFittedError, match="call fit.*zero_shot=True"):
        _clf().predict(texts)
    with pytest.raises(NotFittedError):
        check_is_fitted(_clf())
    probs = _clf(zero_shot=True).predict_proba(texts)
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_cross_val_score_and_a_grid_search_over_the_learning_rate_run(tmp_path):
    from sklearn.model_selection import GridSearchCV, cross_val_score

    from toolkit.classifier import AgileClassifier

    texts, y = _texts_labels(24)
    scores = cross_val_score(_clf(), texts, y, cv=2)  # clone, fit and score per fold: two folds show it
    assert scores.shape == (2,) and np.all((0 <= scores) & (scores <= 1))

    grid = {"train": [{"epochs": 1, "batch_size": 4, "learning_rate": lr} for lr in (1e-3, 1e-4)]}
    search = GridSearchCV(_clf(), grid, cv=2, scoring="accuracy").fit(texts, y)
    assert search.best_params_["train"] in grid["train"]
    assert len(search.cv_results_["mean_test_score"]) == 2

    best = search.best_estimator_  # refit on every row
    np.testing.assert_array_equal(best.classes_, np.array(["no", "yes"]))
    pred = best.predict(texts[:5])
    assert pred.dtype.kind == "U" and set(pred) <= {"no", "yes"}  # the labels' type, not object
    assert 0.0 <= best.score(texts, y) <= 1.0

    best.save(tmp_path / "clf")
    loaded = AgileClassifier.load(tmp_path / "clf", progress=False)
    np.testing.assert_array_equal(loaded.classes_, best.classes_)
    np.testing.assert_allclose(loaded.predict_proba(texts[:5]), best.predict_proba(texts[:5]), atol=1e-5)
