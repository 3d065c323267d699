"""Honest splits: seeded, stratified shuffles for every file / TFDS source; epochs scored on
validation rows only; an eval set missing a class is a warning, and a sweep ranks such a trial."""

import logging

import numpy as np
import pandas as pd
import pytest
import yaml

from toolkit.config import ConfigError, DataSection
from toolkit.data.datasets import load_splits, stratified_order


def _sorted_csv(path, n_yes=60, n_no=60):
    """A label-sorted file: every 'yes' row, then every 'no' row."""
    rows = [(f"text yes {i}", "yes") for i in range(n_yes)] + [(f"text no {i}", "no") for i in range(n_no)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


def _share(part):
    return (part["label"] == "yes").mean()


def test_a_label_sorted_file_gets_stratified_train_validation_test_and_subsets(tmp_path):
    src = _sorted_csv(tmp_path / "d.csv")
    s = load_splits(DataSection(source=str(src), test_fraction=0.25, validation_size=20, train_size=40))
    assert (len(s.test), len(s.validation), len(s.train)) == (30, 20, 40)
    for part in (s.test, s.validation, s.train):
        assert abs(_share(part) - 0.5) <= 0.05, part["label"].tolist()
    ids = [set(p["text"]) for p in s]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    smaller = load_splits(DataSection(source=str(src), test_fraction=0.25, validation_size=20, train_size=20))
    assert set(smaller.train["text"]) <= set(s.train["text"])  # subsets nest
    again = load_splits(DataSection(source=str(src), test_fraction=0.25, validation_size=20, train_size=40))
    assert again.train["text"].tolist() == s.train["text"].tolist()  # seeded
    other = load_splits(DataSection(source=str(src), test_fraction=0.25, validation_size=20, train_size=40,
                                    split_seed=1))
    assert other.train["text"].tolist() != s.train["text"].tolist()


def test_a_separate_test_file_leaves_the_train_file_shuffled_and_stratified(tmp_path):
    src, test = _sorted_csv(tmp_path / "train.csv"), _sorted_csv(tmp_path / "test.csv", 5, 5)
    s = load_splits(DataSection(source=str(src), test_path=str(test), validation_size=10, train_size=20))
    assert len(s.test) == 10 and _share(s.validation) == 0.5 and _share(s.train) == 0.5


def test_every_prefix_of_the_order_is_stratified():
    labels = ["a"] * 90 + ["b"] * 10
    order = stratified_order(labels, seed=3)
    assert sorted(order) == list(range(100))
    for n in (10, 20, 50):
        b = sum(labels[i] == "b" for i in order[:n])
        assert abs(b - n / 10) <= 1


def test_an_eval_set_without_a_class_is_a_warning(tmp_path, caplog):
    src = _sorted_csv(tmp_path / "d.csv", n_yes=100, n_no=2)
    with caplog.at_level(logging.WARNING, logger="toolkit.data.datasets"):
        load_splits(DataSection(source=str(src), test_fraction=0.05, validation_size=3))
    assert "no example of class(es) ['no']" in caplog.text


def test_a_sweep_ranked_on_eval_metrics_needs_validation_rows(tmp_path):
    from conftest import ROOT
    from toolkit.sweep.config import load_sweep

    cfg = yaml.safe_load((ROOT / "sweeps" / "ci.yaml").read_text())
    cfg["data"]["validation_size"] = 0
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="data.validation_size"):
        load_sweep(tmp_path / "s.yaml")
    load_sweep(tmp_path / "s.yaml", ["data.validation_size=16"])


def test_an_undefined_metric_is_reported_as_the_worst_value():
    from toolkit.sweep.trial import _Reporter

    record = {"epoch": 1, "step": 4, "train_loss": 0.5, "eval_f1": 0.0, "eval_roc_auc": None}
    assert _Reporter(0, 2, "eval_roc_auc", "max")._metrics(record)["eval_roc_auc"] == -1.0
    assert _Reporter(0, 2, "eval_roc_auc", "max")._metrics(record)["eval_roc_auc_placeholder"] == 1
    assert _Reporter(0, 2, "eval_f1", "max")._metrics(record)["eval_f1"] == 0.0
    assert np.isclose(_Reporter(0, 2, "eval_loss", "min")._metrics(record)["eval_loss"], 1e30)


def test_a_label_without_a_name_is_reported_at_its_1_based_file_row(tmp_path):
    from toolkit.data.sources import DataError

    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0, 1, 1, 2]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match=r"d\.csv: row 4, column 'label': data.label_names .* value 2"):
        load_splits(DataSection(source=str(tmp_path / "d.csv"), test_fraction=0.25,
                                label_names={"0": "no", "1": "yes"}))
