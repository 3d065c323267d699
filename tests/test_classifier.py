"""AgileClassifier end to end on a tiny random Gemma 3 and a tiny real tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from flax import nnx

import keras_fixtures as kf
from conftest import HAM, LABELS, SPAM, VERBALIZERS, no_temp_files, train_cli
from conftest import spam_ham as _data
from toolkit.classifier import AgileClassifier
from toolkit.models.configs import Runtime, get_config
from toolkit.models.gemma import Gemma


@pytest.fixture(scope="module")
def fitted(tiny_tokenizer):
    base = Gemma(get_config("tiny_gemma3"), runtime=Runtime(param_dtype="float32"), rngs=nnx.Rngs(0))
    clf = AgileClassifier(LABELS, model=(base, tiny_tokenizer), verbalizers=VERBALIZERS,
                          prompt={"instructions": "Classify"}, max_length=64, progress=False,
                          lora={"rank": 4, "targets": ("q", "v", "up", "down")},
                          train={"epochs": 6, "batch_size": 8, "learning_rate": 2e-2})
    texts, labels = _data()
    return clf.fit(texts, labels, eval_texts=texts[:6], eval_labels=labels[:6])


@pytest.mark.slow
def test_fit_learns_and_records_history(fitted):
    assert len(fitted.history) == 6 and fitted.history[-1]["train_loss"] < fitted.history[0]["train_loss"]
    assert "eval_roc_auc" in fitted.history[-1]
    texts, labels = _data(12)
    assert (fitted.predict(texts) == np.array(labels)).mean() >= 0.9


@pytest.mark.slow
def test_inputs_may_be_lists_arrays_or_series(fitted):
    texts, _ = _data(6)
    p_list = fitted.predict_proba(texts)
    np.testing.assert_allclose(fitted.predict_proba(np.array(texts)), p_list, atol=1e-6)
    np.testing.assert_allclose(fitted.predict_proba(pd.Series(texts, index=range(10, 16))), p_list, atol=1e-6)
    assert p_list.shape == (6, 2) and np.allclose(p_list.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_evaluate_writes_metrics_plots_and_error_table(fitted, tmp_path):
    texts, labels = _data(10)
    m = fitted.evaluate(texts, labels, out_dir=tmp_path)
    assert m["accuracy"] >= 0.9 and m["roc_auc"] is not None
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    for name in ("confusion_matrix.png", "roc_curve.png", "misclassified.csv", "misclassified.md"):
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.slow
def test_save_and_load_give_the_same_scores(fitted, tmp_path):
    texts, _ = _data(6)
    path = fitted.save(tmp_path / "clf")
    assert no_temp_files(tmp_path)  # no temp dirs left behind
    again = AgileClassifier.load(path, progress=False)
    np.testing.assert_allclose(again.predict_proba(texts), fitted.predict_proba(texts), atol=1e-6)
    assert again.labels == LABELS and again.verbalizers == VERBALIZERS


@pytest.mark.parametrize("texts, labels, message", [
    (["ok", "   "], ["spam", "ham"], "row 2"),
    (["ok", "fine"], ["spam", "eggs"], "eggs"),
    (["ok", "fine"], ["spam", "spam"], "ham"),
    (["ok", "fine"], ["spam"], "2 texts but 1 labels"),
    ([], [], "empty"),
])
@pytest.mark.slow
def test_bad_training_data_is_named(fitted, texts, labels, message):
    from toolkit.data.sources import DataError

    with pytest.raises(DataError, match=message):
        fitted.fit(texts, labels)


@pytest.mark.slow
def test_multi_token_label_is_rejected_with_its_pieces(tiny_tokenizer):
    base = Gemma(get_config("tiny_gemma3"), runtime=Runtime(param_dtype="float32"), rngs=nnx.Rngs(0))
    clf = AgileClassifier(("spam", "ham"), model=(base, tiny_tokenizer), max_length=64, progress=False,
                          prompt={"instructions": "Classify"}, zero_shot=True)
    with pytest.raises(ValueError, match=r"'spam' -> 'spam' tokenises as \["):
        clf.predict_proba(["hello"])


@pytest.mark.slow
def test_train_cli_writes_a_complete_run_directory(tmp_path):
    preset = kf.make_preset("gemma3", tmp_path)
    texts, labels = _data(32)
    pd.DataFrame({"message": texts, "kind": labels}).to_csv(tmp_path / "data.csv", index=False)
    cfg = {
        "name": "cli", "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(preset), "param_dtype": "float32"},
        "lora": {"rank": 2, "targets": ["q", "v"]},
        "data": {"source": str(tmp_path / "data.csv"), "text_column": "message", "label_column": "kind",
                 "test_fraction": 0.25},
        "classifier": {"labels": list(LABELS), "verbalizers": VERBALIZERS, "max_length": 64,
                       "prompt": {"instructions": "Classify"}},
        "train": {"epochs": 2, "batch_size": 8},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = train_cli(tmp_path / "cfg.yaml", "train.learning_rate=0.01", fresh_process=True)  # its start-up output
    assert r.returncode == 0, r.stderr[-3000:]
    assert "roc_auc" in r.stdout
    for chatter in ("cuInit", "Could not find cuda drivers", "oneDNN custom operations"):  # quiet by default
        assert chatter not in r.stderr + r.stdout, chatter
    run = tmp_path / "runs" / "cli"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_size"] == 24 and metrics["test_size"] == 8 and len(metrics["history"]) == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["learning_rate"] == 0.01
    for name in ("confusion_matrix.png", "roc_curve.png", "misclassified.csv", "classifier/classifier.json"):
        assert (run / name).is_file(), name


@pytest.mark.slow
def test_multilabel_one_question_per_category_shares_one_adapter(tiny_tokenizer, tmp_path):
    from toolkit.data.sources import DataError
    from toolkit.multilabel import MultiLabelClassifier

    base = Gemma(get_config("tiny_gemma3"), runtime=Runtime(param_dtype="float32"), rngs=nnx.Rngs(0))
    clf = MultiLabelClassifier(["prize", "meeting"], question="About {category}", labels=("a", "in"),
                               model=(base, tiny_tokenizer), prompt={"instructions": "x"}, max_length=64,
                               progress=False, lora={"rank": 4, "alpha": None, "targets": ("q", "v", "up")},
                               train={"epochs": 8, "batch_size": 8, "learning_rate": 2e-2})
    texts = SPAM * 4 + HAM * 4
    y = np.array([[1, 0]] * 12 + [[0, 1]] * 12)
    clf.fit(texts, y)
    probs = clf.predict_proba(texts)
    assert probs.shape == (24, 2) and ((probs >= 0.5) == y).mean() >= 0.9
    m = clf.evaluate(texts, y)
    assert m["per_category"]["prize"]["roc_auc"] >= 0.9
    again = AgileClassifier.load(clf.save(tmp_path / "ml"), progress=False)
    assert isinstance(again, MultiLabelClassifier) and again.category_names == ("prize", "meeting")
    np.testing.assert_allclose(again.predict_proba(texts[:4]), probs[:4], atol=1e-6)
    with pytest.raises(DataError, match=r"row 1, category 'prize': value 2"):
        clf.fit(texts[:2], np.array([[2, 0], [0, 1]]))
