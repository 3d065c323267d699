"""Choosing an operating point: the probability above which a text is called positive.

Safety teams ship a classifier at a target precision or recall, not at 0.5. A threshold
is chosen on labelled rows that did not train the adapters (a validation split), saved
with the classifier, and used by `predict`, `evaluate` and `agile-predict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TARGETS = ("target_precision", "target_recall", "metric")


def check_target(*, target_precision: float | None = None, target_recall: float | None = None,
                 metric: str | None = None) -> tuple[str, Any]:
    """(name, value) of the one target given; a ValueError names what is wrong with the arguments."""
    given = {k: v for k, v in zip(TARGETS, (target_precision, target_recall, metric)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"threshold: give exactly one of {', '.join(TARGETS)} (got {sorted(given) or 'none'})")
    (key, value), = given.items()
    if key == "metric" and value != "f1":
        raise ValueError(f"threshold: metric={value!r}; only 'f1' is supported")
    if key != "metric" and not (isinstance(value, (int, float)) and 0 < value <= 1):
        raise ValueError(f"threshold: {key}={value!r}; must be a number in (0, 1], e.g. 0.9")
    return key, value


def choose_threshold(is_positive: Any, scores: Any, *, target_precision: float | None = None,
                     target_recall: float | None = None, metric: str | None = None) -> dict[str, Any]:
    """The threshold meeting exactly one target, with the precision / recall / F1 it gives
    on these rows:

    - `target_precision=p`: the lowest threshold whose precision is at least p (the most
      recall at that precision);
    - `target_recall=r`: the highest threshold whose recall is at least r (the most
      precision at that recall);
    - `metric="f1"`: the threshold of the best F1.
    """
    from sklearn.metrics import precision_recall_curve

    key, value = check_target(target_precision=target_precision, target_recall=target_recall, metric=metric)
    y = np.asarray(is_positive).astype(bool)
    s = np.asarray(scores, np.float64)
    if y.all() or not y.any():
        raise ValueError(f"threshold: the {len(y)} tuning rows hold only one class; a threshold needs both")
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    if key == "metric":
        i = int(np.argmax(f1))
    elif key == "target_precision":
        ok = np.flatnonzero(precision >= value)
        if not len(ok):
            raise ValueError(f"threshold: no threshold reaches precision {value} on these {len(y)} rows (the best is "
                             f"{precision.max():.3f}); lower target_precision or tune on more rows")
        i = int(ok[np.argmax(recall[ok])])
    else:
        ok = np.flatnonzero(recall >= value)
        i = int(ok[np.argmax(precision[ok])])
    return {"threshold": float(thresholds[i]), key: value, "precision": float(precision[i]),
            "recall": float(recall[i]), "f1": float(f1[i]), "rows": int(len(y))}
