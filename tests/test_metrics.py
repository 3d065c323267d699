"""Metrics against small cases worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from toolkit.metrics import classification_metrics, format_table, misclassified, multilabel_metrics

LABELS = ["neg", "pos"]


def _binary_probs(p_pos: list[float]) -> np.ndarray:
    p = np.asarray(p_pos)
    return np.stack([1.0 - p, p], axis=1)


# Six examples, four negatives. Argmax predictions: [0, 1, 1, 0, 1, 0].
#   TP = 1 (row 4), FP = 2 (rows 1, 2), FN = 1 (row 5), TN = 2 (rows 0, 3).
Y6 = [0, 0, 0, 0, 1, 1]
P6 = _binary_probs([0.2, 0.6, 0.7, 0.1, 0.9, 0.3])


@pytest.fixture(scope="module")
def binary() -> dict:
    return classification_metrics(Y6, P6, LABELS)


def test_binary_hand_computed(binary: dict) -> None:
    assert binary["n"] == 6
    assert binary["positive"] == "pos"
    assert binary["accuracy"] == pytest.approx(3 / 6)
    # Recall(neg) = 2/4, recall(pos) = 1/2.
    assert binary["balanced_accuracy"] == pytest.approx(0.5)
    # F1(pos) = 2TP / (2TP + FP + FN) = 2 / 5.
    assert binary["f1"] == pytest.approx(0.4)
    # F1(neg): tp 2, fp 1, fn 2 -> 4/7; macro = (4/7 + 2/5) / 2.
    assert binary["f1_macro"] == pytest.approx((4 / 7 + 0.4) / 2)
    assert binary["f1_micro"] == pytest.approx(0.5)
    # Pairs (pos, neg) ranked right: 0.9 beats all 4 negatives, 0.3 beats 0.2 and 0.1 -> 6/8.
    assert binary["roc_auc"] == pytest.approx(0.75)
    # Ranked: 0.9 P, 0.7 N, 0.6 N, 0.3 P, ... -> precision at each positive 1/1, 2/4 -> AP = 0.75.
    assert binary["pr_auc"] == pytest.approx(0.75)
    assert binary["share_predicted_positive"] == pytest.approx(3 / 6)
    assert binary["per_class"]["pos"] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})


def test_confusion_matrix_rows_are_true_labels(binary: dict) -> None:
    # Row "neg" (4 true negatives): 2 predicted neg, 2 predicted pos. Transposed would be [[2, 1], [2, 1]].
    assert binary["confusion_matrix"] == [[2, 2], [1, 1]]
    assert binary["labels"] == LABELS


def test_result_is_strict_json(binary: dict) -> None:
    assert json.loads(json.dumps(binary, allow_nan=False)) == binary


@pytest.mark.parametrize("positive", ["neg", 0])
def test_positive_by_name_or_index(positive: str | int) -> None:
    m = classification_metrics(Y6, P6, LABELS, positive=positive)
    assert m["positive"] == "neg"
    assert m["f1"] == pytest.approx(4 / 7)
    # The ranking flips with the class, AUC is symmetric: still 6/8.
    assert m["roc_auc"] == pytest.approx(0.75)
    # Scores P(neg) ranked: .9 P, .8 P, .7 N, .4 P, .3 P, .1 N -> precisions 1, 1, 3/4, 4/5.
    assert m["pr_auc"] == pytest.approx((1 + 1 + 0.75 + 0.8) / 4)
    # Predicted neg: rows 0, 3, 5.
    assert m["share_predicted_positive"] == pytest.approx(0.5)


def test_share_predicted_positive_catches_collapse() -> None:
    m = classification_metrics([0, 0, 0, 1], _binary_probs([0.1, 0.2, 0.3, 0.4]), LABELS)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["share_predicted_positive"] == 0.0
    assert m["f1"] == 0.0  # positives exist but none predicted: defined, and 0


@pytest.mark.parametrize("bad", ["maybe", 2, -1, True])
def test_invalid_positive(bad: object) -> None:
    with pytest.raises(ValueError, match="positive"):
        classification_metrics(Y6, P6, LABELS, positive=bad)


def test_one_class_present_gives_none_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics([1, 1, 1], _binary_probs([0.9, 0.4, 0.8]), LABELS)
    assert m["roc_auc"] is None and m["pr_auc"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[0, 0], [1, 2]]
    json.dumps(m, allow_nan=False)


# Three classes, seven examples; argmax predictions [0, 1, 1, 1, 2, 0, 1].
Y7 = [0, 0, 1, 1, 2, 2, 2]
PRED7 = [0, 1, 1, 1, 2, 0, 1]


def _peaked(pred: list[int], n_classes: int = 3) -> np.ndarray:
    p = np.full((len(pred), n_classes), 0.1)
    p[np.arange(len(pred)), pred] = 0.8
    return p


def test_three_class_hand_computed() -> None:
    m = classification_metrics(Y7, _peaked(PRED7), ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 1, 1]]
    # F1: a tp1 fp1 fn1 -> 1/2; b tp2 fp2 fn0 -> 2/3; c tp1 fp0 fn2 -> 1/2.
    assert m["f1_macro"] == pytest.approx(5 / 9)
    assert m["f1"] == m["f1_macro"]
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["f1_micro"] == pytest.approx(4 / 7)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    # One-vs-rest AUC with ties counting 1/2, scores 0.8 where predicted else 0.1:
    #   a: pos {.8, .1} vs neg {.1 x4, .8}: (4 + .5) + (4 x .5) = 6.5 / 10
    #   b: pos {.8, .8} vs neg {.1 x3, .8 x2}: 2 x (3 + 2 x .5) = 8 / 10
    #   c: pos {.8, .1, .1} vs neg {.1 x4}: 4 + 2 x (4 x .5) = 8 / 12
    assert m["roc_auc"] == pytest.approx((0.65 + 0.8 + 8 / 12) / 3)
    assert m["share_predicted_positive"] is None and m["positive"] is None
    with pytest.raises(ValueError, match="binary"):
        classification_metrics(Y7, _peaked(PRED7), ["a", "b", "c"], positive="a")


def test_multiclass_absent_class_left_out_of_macro() -> None:
    # Class "c" is neither true nor predicted: its F1 and AUC are undefined, not 0.
    y, pred = [0, 0, 1, 1], [0, 1, 1, 1]
    m = classification_metrics(y, _peaked(pred), ["a", "b", "c"])
    assert m["per_class"]["c"]["f1"] is None
    assert m["f1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # a: pos {.8, .1} vs neg {.1, .1}: 2 + 1 = 3/4; b: pos {.8, .8} vs neg {.1, .8}: 2 x 1.5 = 3/4.
    assert m["roc_auc"] == pytest.approx(0.75)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.ones((2, 3)) / 3, LABELS)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_metrics([0, 2], _binary_probs([0.1, 0.2]), LABELS)
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], np.zeros((0, 2)), LABELS)


def test_multilabel_hand_computed() -> None:
    y = [[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]]
    p = [[0.9, 0.2, 0.1], [0.4, 0.7, 0.2], [0.6, 0.1, 0.3], [0.2, 0.4, 0.1]]
    m = multilabel_metrics(y, p, ["violence", "gender", "religion"])
    cat = m["per_category"]
    # violence: predicted rows 0, 2; tp 1 fp 1 fn 1 -> 1/2. gender: predicted row 1; tp 1 fp 0 fn 1 -> 2/3.
    assert cat["violence"]["f1"] == pytest.approx(0.5)
    assert cat["gender"]["f1"] == pytest.approx(2 / 3)
    # religion: no positives, none predicted -> undefined everywhere, left out of the macros.
    assert cat["religion"] == {"f1": None, "roc_auc": None, "pr_auc": None, "support": 0,
                               "share_predicted_positive": 0.0}
    assert m["f1_macro"] == pytest.approx((0.5 + 2 / 3) / 2)
    # Pooled: tp 2, fp 1, fn 2 -> 4/7.
    assert m["f1_micro"] == pytest.approx(4 / 7)
    # violence: pos {.9, .4} vs neg {.6, .2} -> 3/4; gender: pos {.7, .4} vs neg {.2, .1} -> 1.
    assert cat["violence"]["roc_auc"] == pytest.approx(0.75)
    assert m["roc_auc_macro"] == pytest.approx(0.875)
    json.dumps(m, allow_nan=False)


def test_misclassified_most_confident_first() -> None:
    texts = ["t0", "t1", "t2", "t3", "t4", "t5"]
    p_pos = [0.2, 0.65, 0.95, 0.1, 0.9, 0.25]  # wrong: t1 (conf .65), t2 (.95), t5 (1 - .25 = .75)
    df = misclassified(texts, Y6, _binary_probs(p_pos), LABELS)
    assert list(df.columns) == ["text", "true", "predicted", "confidence", "p_true"]
    assert list(df["text"]) == ["t2", "t5", "t1"]
    assert list(df.index) == [2, 5, 1]
    assert list(df["true"]) == ["neg", "pos", "neg"]
    assert list(df["predicted"]) == ["pos", "neg", "pos"]
    assert df["confidence"].tolist() == pytest.approx([0.95, 0.75, 0.65])
    assert df["p_true"].tolist() == pytest.approx([0.05, 0.25, 0.35])
    assert list(misclassified(texts, Y6, _binary_probs(p_pos), LABELS, k=2)["text"]) == ["t2", "t5"]
    assert misclassified(texts, [1, 1, 1, 0, 0, 0], _binary_probs([0.9] * 3 + [0.1] * 3), LABELS).empty


def test_format_table_aligned() -> None:
    rows = [{"train_size": 16, "accuracy": 0.5, "roc_auc": None, "labels": ["a"]},
            {"train_size": 1024, "accuracy": 0.93126, "roc_auc": 0.875, "run": "lora-r8"}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["train_size", "accuracy", "roc_auc", "run"]  # lists skipped, union of keys
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["16", "0.5000", "-", "-"]
    assert lines[3].split() == ["1024", "0.9313", "0.8750", "lora-r8"]
    # Numbers right-aligned: their last characters line up with the header's.
    end = lines[0].index("accuracy") + len("accuracy")
    assert lines[2][end - 6 : end] == "0.5000" and lines[3][end - 6 : end] == "0.9313"
    single = format_table({"f1": 0.25, "n": 4}, keys=["n", "f1"], digits=2).splitlines()
    assert single[0].split() == ["n", "f1"] and single[2].split() == ["4", "0.25"]
