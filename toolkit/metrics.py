"""Evaluation metrics for few-shot classifiers, from class probabilities.

Pure numpy/scikit-learn (no JAX) so that CLIs, notebooks and Ray drivers can
score saved predictions without touching an accelerator.

Conventions shared by every function here:
- Predictions are the argmax of the probabilities (single-label) or
  `prob >= threshold` (multi-label).
- Results are plain Python (float/int/str/None/list/dict), ready for
  `json.dumps(..., allow_nan=False)`: an undefined score is `None`, never NaN,
  because NaN is not JSON and silently poisons sweep objectives.
- F1 of a class with no true and no predicted examples is undefined (0/0) and
  is left out of macro averages instead of counting as 0, which would punish
  a model for a class the evaluation set does not contain.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["classification_metrics", "multilabel_metrics", "misclassified", "format_table"]

DEFAULT_THRESHOLD = 0.5


# ---------------------------------------------------------------------------
# Input checks


def _as_probs(probs: Any, n_columns: int, what: str) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_columns:
        raise ValueError(f"probs must have shape (n, {n_columns}) to match the {n_columns} {what}; got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("no examples: metrics are undefined for an empty evaluation set")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or inf")
    return p


def _as_class_ids(y_true: Any, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.shape != (n,):
        raise ValueError(f"y_true must have shape ({n},) to match probs; got {y.shape}")
    if y.dtype.kind not in "iub":
        if y.dtype.kind == "f" and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y_true must hold integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true ids must lie in [0, {n_classes}); got range [{y.min()}, {y.max()}]")
    return y


def _as_indicator(y_true: Any, shape: tuple[int, int]) -> np.ndarray:
    y = np.asarray(y_true)
    if y.shape != shape:
        raise ValueError(f"y_true must have shape {shape} to match probs; got {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("multi-label y_true must be 0/1")
    return y.astype(bool)


def _resolve_positive(positive: int | str | None, labels: Sequence[str]) -> int:
    if positive is None:
        return 1
    if isinstance(positive, str):
        if positive not in labels:
            raise ValueError(f"positive={positive!r} is not one of the labels {list(labels)}")
        return list(labels).index(positive)
    if isinstance(positive, (int, np.integer)) and not isinstance(positive, bool) and 0 <= positive < len(labels):
        return int(positive)
    raise ValueError(f"positive must be a label name or an index in [0, {len(labels)}); got {positive!r}")


# ---------------------------------------------------------------------------
# Shared building blocks


def _float(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> list[float | None]:
    """Per-class F1 = 2tp / (2tp + fp + fn); None where the class never occurs nor is predicted."""
    denom = 2 * tp + fp + fn
    return [float(2 * t / d) if d > 0 else None for t, d in zip(tp, denom)]


def _micro_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float | None:
    return _f1_from_counts(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))[0]


def _ranking_score(fn: Callable[..., float], is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC / average precision of one class, None when y_true holds only one side.

    With no negatives (or no positives) the ranking is not defined; sklearn
    would raise or warn and return NaN, neither of which belongs in metrics.json.
    """
    n_pos = int(is_positive.sum())
    if n_pos == 0 or n_pos == is_positive.size:
        return None
    return _float(fn(is_positive, scores))


def _per_column_ranking(fn: Callable[..., float], indicator: np.ndarray, probs: np.ndarray) -> list[float | None]:
    return [_ranking_score(fn, indicator[:, k], probs[:, k]) for k in range(probs.shape[1])]


def _confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


# ---------------------------------------------------------------------------
# Public API


def classification_metrics(
    y_true: Any,
    probs: Any,
    labels: Sequence[str],
    *,
    positive: int | str | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Single-label metrics of a C-class classifier from its class probabilities.

    Predictions are the most probable class, or, with `threshold` (binary only), the
    positive class wherever its probability is at least `threshold`.

    `f1`, `roc_auc` and `pr_auc` are about the positive class when C == 2
    (`positive`: a label name or index, default the second label, as in
    `("not hateful", "hateful")`), because with rare positives a macro average
    hides exactly the class one cares about. For C > 2 they are macro averages
    (one-vs-rest for the ranking scores) and `positive` must be None.

    `roc_auc` / `pr_auc` are None (not NaN, no exception) when y_true contains
    only one class, e.g. a tiny or unlucky evaluation split; for C > 2, classes
    absent from y_true are left out of their macro averages.

    `share_predicted_positive` (binary only, None otherwise) catches the
    classic few-shot collapse where the model answers one label for everything
    while accuracy still looks fine on an imbalanced set.

    Also returned: `confusion_matrix` (rows = true, columns = predicted),
    `per_class` ({label: precision/recall/f1/support}), `n`, `labels`, `positive`.
    """
    labels = [str(label) for label in labels]
    n_classes = len(labels)
    if n_classes < 2:
        raise ValueError(f"need at least 2 labels, got {labels}")
    p = _as_probs(probs, n_classes, "labels")
    y = _as_class_ids(y_true, p.shape[0], n_classes)
    binary = n_classes == 2
    if not binary and (positive is not None or threshold is not None):
        raise ValueError("positive and threshold only apply to binary classification")
    pos = _resolve_positive(positive, labels) if binary else None

    pred = p.argmax(axis=1) if threshold is None else np.where(p[:, pos] >= threshold, pos, 1 - pos)
    cm = _confusion_matrix(y, pred, n_classes)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    f1s = _f1_from_counts(tp, predicted - tp, support - tp)
    recalls = [float(t / s) if s > 0 else None for t, s in zip(tp, support)]
    precisions = [float(t / q) if q > 0 else None for t, q in zip(tp, predicted)]
    onehot = y[:, None] == np.arange(n_classes)[None, :]
    roc = _per_column_ranking(roc_auc_score, onehot, p)
    ap = _per_column_ranking(average_precision_score, onehot, p)
    f1_macro = _mean_defined(f1s)

    return {
        "n": int(y.size),
        "accuracy": float(tp.sum() / y.size),
        "balanced_accuracy": _mean_defined(recalls),
        "f1": f1s[pos] if binary else f1_macro,
        "f1_macro": f1_macro,
        "f1_micro": _micro_f1(tp, predicted - tp, support - tp),
        "roc_auc": roc[pos] if binary else (_mean_defined(roc) if np.count_nonzero(support) > 1 else None),
        "pr_auc": ap[pos] if binary else (_mean_defined(ap) if np.count_nonzero(support) > 1 else None),
        "share_predicted_positive": float(np.mean(pred == pos)) if binary else None,
        "positive": labels[pos] if binary else None,
        "threshold": threshold,
        "labels": labels,
        "confusion_matrix": cm.tolist(),
        "per_class": {
            label: {"precision": precisions[c], "recall": recalls[c], "f1": f1s[c], "support": int(support[c])}
            for c, label in enumerate(labels)
        },
    }


def multilabel_metrics(
    y_true: Any,
    probs: Any,
    categories: Sequence[str],
    *,
    threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Metrics of K independent yes/no categories (e.g. ETHOS's violence, gender, ...).

    Each category is its own binary problem with `prob >= threshold` as the
    prediction (`threshold`: one for all, or one per category). Per category: `f1`, `roc_auc`, `pr_auc` (None when undefined:
    no true and no predicted positives for F1, a single class in that column
    for the ranking scores), `support`, `share_predicted_positive`. Overall:
    `f1_micro` (pools every decision, so frequent categories dominate),
    `f1_macro`, `roc_auc_macro` and `pr_auc_macro` (each category counts
    once; undefined categories are left out).
    """
    categories = [str(c) for c in categories]
    p = _as_probs(probs, len(categories), "categories")
    y = _as_indicator(y_true, p.shape)
    cut = np.broadcast_to(np.asarray(threshold, np.float64), (p.shape[1],))
    pred = p >= cut

    tp = np.sum(pred & y, axis=0)
    fp = np.sum(pred & ~y, axis=0)
    fn = np.sum(~pred & y, axis=0)
    f1s = _f1_from_counts(tp, fp, fn)
    roc = _per_column_ranking(roc_auc_score, y, p)
    ap = _per_column_ranking(average_precision_score, y, p)
    share = pred.mean(axis=0)

    return {
        "n": int(y.shape[0]),
        "threshold": float(cut[0]) if np.ndim(threshold) == 0 else [float(t) for t in cut],
        "f1_micro": _micro_f1(tp, fp, fn),
        "f1_macro": _mean_defined(f1s),
        "roc_auc_macro": _mean_defined(roc),
        "pr_auc_macro": _mean_defined(ap),
        "categories": categories,
        "per_category": {
            cat: {
                "f1": f1s[k],
                "roc_auc": roc[k],
                "pr_auc": ap[k],
                "support": int(y[:, k].sum()),
                "share_predicted_positive": float(share[k]),
            }
            for k, cat in enumerate(categories)
        },
    }


def misclassified(
    texts: Sequence[str],
    y_true: Any,
    probs: Any,
    labels: Sequence[str],
    k: int | None = 20,
) -> pd.DataFrame:
    """The k most confidently wrong examples, most confident first (k=None: all).

    Confident mistakes are where error analysis pays off: they are label
    noise, sarcasm, missing context or a prompt the model misreads, whereas
    near-0.5 mistakes are mostly just hard. Columns: `text`, `true`,
    `predicted`, `confidence` (probability of the predicted class), `p_true`
    (probability given to the true class); the index is the row's position
    in the inputs, to trace it back to the dataset. Ties keep input order.
    """
    labels = [str(label) for label in labels]
    p = _as_probs(probs, len(labels), "labels")
    y = _as_class_ids(y_true, p.shape[0], len(labels))
    texts = list(texts)
    if len(texts) != y.size:
        raise ValueError(f"got {len(texts)} texts for {y.size} examples")

    rows = np.arange(y.size)
    pred = p.argmax(axis=1)
    confidence = p[rows, pred]
    wrong = rows[pred != y]
    order = wrong[np.argsort(-confidence[wrong], kind="stable")]
    if k is not None:
        order = order[: max(k, 0)]
    names = np.asarray(labels, dtype=object)
    return pd.DataFrame(
        {
            "text": [texts[i] for i in order],
            "true": names[y[order]],
            "predicted": names[pred[order]],
            "confidence": confidence[order],
            "p_true": p[order, y[order]],
        },
        index=pd.Index(order, name="row"),
    )


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, np.generic))


def format_table(
    metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    keys: Sequence[str] | None = None,
    *,
    digits: int = 4,
) -> str:
    """A plain-text table, one row per metrics dict, for CLIs and logs.

    `keys=None` shows every scalar key in first-seen order, so a caller adds
    a column just by adding a key (`{"train_size": 64, **metrics}`); lists and
    dicts (confusion matrix, per-class scores) are skipped. Numbers are
    right-aligned, text left-aligned; missing or undefined values print `-`.
    """
    rows = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    if keys is None:
        keys = list(dict.fromkeys(key for row in rows for key, value in row.items() if _is_scalar(value)))
    cells = [[_cell(row.get(key), digits) for key in keys] for row in rows]
    numeric = [
        all(isinstance(row.get(key), (int, float, np.number)) or row.get(key) is None for row in rows) for key in keys
    ]
    widths = [max([len(key)] + [len(r[j]) for r in cells]) for j, key in enumerate(keys)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(keys), line(["-" * w for w in widths])] + [line(r) for r in cells])
