"""Multi-label as a first-class task: `classifier.task: multilabel` from YAML on ETHOS's
categories (the codelab's rows) and on files (0/1 columns or a delimited column), through
train, saved classifier, predict and export (its sweep: tests/test_sweep.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, needs_ethos, train_cli
from toolkit.config import ConfigError, RunConfig, from_dict, load_config
from toolkit.data import sources
from toolkit.data.datasets import load_splits
from toolkit.data.sources import ETHOS_CATEGORIES, DataError

CONFIG = ROOT / "sweeps" / "ethos_multilabel_270m.yaml"
TINY = ["model.name=random:tiny_gemma3", "model.param_dtype=float32", "classifier.max_length=64",
        "train.batch_size=8", "train.learning_rate=0.01"]


@needs_ethos
def test_ethos_multilabel_is_the_codelab_split_with_the_multilabel_files_categories():
    train, test = sources.ethos_multilabel_split()
    binary_train, binary_test = sources.ethos_split(sources.load_ethos("binary"))
    assert list(train.index) == list(binary_train.index) and list(test.index) == list(binary_test.index)
    assert list(train.columns) == ["text", *ETHOS_CATEGORIES]
    multi = sources.load_ethos("multilabel")
    both = pd.concat([train, test])
    # Every annotated comment found its row (23 differ only in U+00A0 vs " "), and no other row has a category.
    assert both[list(ETHOS_CATEGORIES)].sum().to_dict() == multi[list(ETHOS_CATEGORIES)].sum().to_dict()
    # The multi-label file annotates isHate >= 0.5: no row the binary task calls not hateful has a category.
    labels = sources.load_ethos("binary")["label"].loc[both.index]
    assert both[list(ETHOS_CATEGORIES)].sum(axis=1)[labels == 0].sum() == 0


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text(text)
    return path


def test_label_columns_and_a_delimited_column_give_the_same_matrix(tmp_path):
    rows = [("win a prize", 1, 1, 0), ("see you at lunch", 0, 0, 0), ("free money", 1, 1, 0),
            ("meeting at noon", 0, 0, 1), ("report looks good", 0, 0, 1), ("click to win", 1, 0, 0),
            ("team lunch at noon", 0, 0, 1), ("money money", 0, 1, 0)]
    cols = pd.DataFrame(rows, columns=["text", "spam", "money", "work"])
    cols.to_csv(tmp_path / "cols.csv", index=False)
    tags = cols.assign(tags=["|".join(c for c in ("spam", "money", "work") if r[c]) for _, r in cols.iterrows()])
    tags[["text", "tags"]].to_csv(tmp_path / "tags.csv", index=False)
    a = load_splits(from_dict(RunConfig, {"data": {"source": str(tmp_path / "cols.csv"), "test_fraction": 0.25,
                                                   "label_columns": ["spam", "money", "work"]},
                                          "classifier": {"task": "multilabel"}}).data)
    b = load_splits(from_dict(RunConfig, {"data": {"source": str(tmp_path / "tags.csv"), "label_column": "tags",
                                                   "label_delimiter": "|", "test_fraction": 0.25},
                                          "classifier": {"task": "multilabel"}}).data)
    assert len(a.train) == 6 and len(a.test) == 2
    for x, y in zip(a[:2], b[:2]):  # b's categories come sorted: money, spam, work
        assert sorted(x.columns) == sorted(y.columns)
        assert x[["text", "money", "spam", "work"]].reset_index(drop=True).equals(
            y[["text", "money", "spam", "work"]].reset_index(drop=True))


@pytest.mark.parametrize("text, kw, words", [
    ("text,spam\nwin,1\nlunch,2\n", {"label_columns": ["spam"]},
     "row 2 (line 3 of the file), column 'spam': expected 0 or 1, got 2"),
    ("text,tags\nwin,spam\nlunch,food\n", {"label_column": "tags", "label_delimiter": "|",
                                           "categories": ["spam"]},
     "row 2 (line 3 of the file), column 'tags': category 'food' is not one of ['spam']"),
    ("text,spam\nwin,1\n", {"label_columns": ["spma"]}, "column 'spma' not found"),
])
def test_a_bad_multilabel_cell_is_named_in_one_line(tmp_path, text, kw, words):
    with pytest.raises(DataError) as e:
        sources.read_multilabel_table(_csv(tmp_path, text), **kw)
    assert words in str(e.value) and "rows.csv" in str(e.value) and "\n" not in str(e.value)


def test_task_and_data_must_agree():
    with pytest.raises(ValueError, match="classifier.task: got 'single_label'; must be multilabel"):
        from_dict(RunConfig, {"data": {"source": "ethos_multilabel"}})
    with pytest.raises(ValueError, match="classifier.task: got 'multilabel'; must be multilabel exactly when"):
        from_dict(RunConfig, {"classifier": {"task": "multilabel"}})
    with pytest.raises(ConfigError, match="classifier.question"):
        load_config(CONFIG, ["classifier.question=Is it hateful"])


@needs_ethos
@pytest.mark.slow
def test_a_category_with_no_training_row_is_refused_before_any_file(tmp_path):
    r = train_cli(CONFIG, *TINY, f"output_dir={tmp_path}", "data.train_size=4", "classifier.categories=[disability]")
    assert r.returncode != 0
    assert "category 'disability' is never set in the 4 training rows" in r.stderr
    assert not (tmp_path / "ethos_multilabel_270m").exists()


@needs_ethos
@pytest.mark.slow
def test_a_multilabel_run_from_yaml_trains_saves_predicts_and_exports(tmp_path):
    out = tmp_path / "runs"
    r = train_cli(CONFIG, *TINY, f"output_dir={out}", "data.train_size=48", "data.validation_size=48",
                  "train.epochs=2", "classifier.threshold={metric: f1}")
    assert r.returncode == 0, r.stderr[-3000:]
    run = out / "ethos_multilabel_270m"
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["per_category"]) == list(ETHOS_CATEGORIES)
    assert metrics["roc_auc"] == metrics["roc_auc_macro"] and metrics["test_size"] == 198
    for name in ETHOS_CATEGORIES:  # the console table has a row per category, plus the macro row
        assert name in r.stdout
    assert "macro" in r.stdout
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all(h.get("eval_roc_auc") == h.get("eval_roc_auc_macro") is not None for h in metrics["history"])
    assert (run / "roc_curve.png").read_bytes()[:4] == b"\x89PNG"

    from toolkit.classifier import AgileClassifier
    from toolkit.multilabel import MultiLabelClassifier

    # One threshold per category, chosen on the validation rows (or 0.5, with the reason, where
    # those rows cannot choose), used for the test metrics and saved with the classifier.
    tuned = metrics["threshold"]
    assert set(tuned["per_category"]) | set(tuned["kept"]) == set(ETHOS_CATEGORIES) and tuned["per_category"]
    clf = AgileClassifier.load(run / "classifier", progress=False)
    assert isinstance(clf, MultiLabelClassifier) and clf.category_names == ETHOS_CATEGORIES
    assert clf.threshold_ == tuned
    expected = [tuned["per_category"][c]["threshold"] if c in tuned["per_category"] else 0.5 for c in ETHOS_CATEGORIES]
    np.testing.assert_allclose(clf.thresholds(), expected)
    texts = ["They should all be deported", "Lovely weather today"]
    probs = clf.predict_proba(texts)
    assert probs.shape == (2, len(ETHOS_CATEGORIES))
    assert (clf.predict(texts) == (probs >= np.array(expected))).all()

    from toolkit import predict_file

    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    predict_file(run / "classifier", tmp_path / "in.csv", tmp_path / "out.csv", progress=False)
    scored = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(scored[[f"p_{c}" for c in ETHOS_CATEGORIES]].to_numpy(), probs, atol=1e-5)
    assert scored["predicted"].fillna("").tolist() == [
        ";".join(c for c, hit in zip(ETHOS_CATEGORIES, row) if hit) for row in probs >= np.array(expected)]

    from toolkit.export import export

    exported = export(run / "classifier", tmp_path / "lora", format="lora")
    again = AgileClassifier.load(exported, progress=False)
    assert isinstance(again, MultiLabelClassifier)
    np.testing.assert_allclose(again.predict_proba(texts), probs, atol=1e-5)
