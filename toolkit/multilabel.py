"""Multi-label classification: one yes/no prompt per category, one shared adapter.

Why this design: each category gets its own question ("... {category}?"), so
the answer stays a single yes/no token and every category's probability is
scored independently (multi-label is not a softmax over categories); one
LoRA is shared across all questions, so rare categories (ETHOS has 53
`disability` rows) borrow what the common ones teach about the task. The cost
is one forward pass per (text, category); each is short, and scoring is
batched. The alternative, generating a list of category names, needs
decoding and gives no calibrated per-category score for ROC-AUC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from toolkit.classifier import AgileClassifier
from toolkit.config import ClassifierSection


def with_averages(m: dict[str, Any]) -> dict[str, Any]:
    """`f1`, `roc_auc`, `pr_auc` as the macro averages, so a multi-label run is ranked, swept
    and checkpointed by the same metric names as a single-label one (each category counts once)."""
    return {**m, "f1": m["f1_macro"], "roc_auc": m["roc_auc_macro"], "pr_auc": m["pr_auc_macro"]}


class MultiLabelClassifier(AgileClassifier):
    """`fit(texts, Y)` with Y an (n, categories) 0/1 matrix; `predict_proba` -> (n, categories)."""

    def __init__(self, categories: Sequence[str], *, question: str = ClassifierSection.question,
                 labels: Sequence[str] = ("no", "yes"), **kwargs: Any):
        self.categories = categories
        self.question = question
        super().__init__(labels, **kwargs)

    def _task_fields(self) -> dict[str, Any]:
        if isinstance(self.categories, (str, bytes)) or not self.categories:
            raise ValueError(f"categories: got {self.categories!r}; must be a non-empty list of category names "
                             "(classifier.categories, or the data's own category columns)")
        return {"task": "multilabel", "categories": tuple(str(c) for c in self.categories), "question": self.question}

    @classmethod
    def _task_arguments(cls, section: Any) -> dict[str, Any]:
        return {"categories": section.categories, "question": section.question}

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """Its own arguments and every `AgileClassifier` one it passes on (scikit-learn reads
        the signature, where those hide in **kwargs)."""
        return sorted({"categories", "question", *AgileClassifier._get_param_names()})

    def _fitted_classes(self) -> np.ndarray:
        return np.asarray(self.category_names)

    @property
    def category_names(self) -> tuple[str, ...]:
        return self.spec.classifier.categories

    def _matrix(self, y: Any, n: int, what: str) -> np.ndarray:
        from toolkit.data.sources import DataError

        arr = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
        if arr.shape != (n, len(self.category_names)):
            raise DataError(f"{what}: labels must be an ({n}, {len(self.category_names)}) matrix for categories "
                            f"{list(self.category_names)}, got shape {arr.shape}")
        bad = np.argwhere(~np.isin(arr, (0, 1)))
        if len(bad):
            r, c = bad[0]
            raise DataError(f"{what}: row {r + 1}, category {self.category_names[c]!r}: value {arr[r, c].item()!r} is not 0/1")
        return arr.astype(np.int32)

    def _checked(self, texts: Iterable[Any], labels: Any, what: str) -> tuple[list[str], np.ndarray | None]:
        """Validated (texts, (n, categories) 0/1 label matrix or None)."""
        texts, _ = super()._checked(texts, None, what)
        return texts, None if labels is None else self._matrix(labels, len(texts), what)

    def _instructions(self) -> list[str]:
        return [self.question.format(category=c) for c in self.category_names]

    def _answers(self, y: np.ndarray) -> np.ndarray:
        return y.T.reshape(-1)  # category-major, as the questions are

    def _outputs(self, probs: np.ndarray) -> np.ndarray:
        """(n, categories): the probability of "yes" for each category."""
        return probs[:, 1].reshape(len(self.category_names), -1).T

    def _eval_metrics(self, y: np.ndarray, out: np.ndarray) -> dict[str, Any]:
        from toolkit.metrics import multilabel_metrics

        return with_averages(multilabel_metrics(y, out, list(self.category_names)))

    def thresholds(self) -> np.ndarray:
        """Each category's threshold: tuned (`tune_threshold`) or 0.5."""
        per = (self.threshold_ or {}).get("per_category", {})
        return np.array([per[c]["threshold"] if c in per else 0.5 for c in self.category_names])

    def _decide(self, probs: np.ndarray) -> np.ndarray:
        return (probs >= self.thresholds()).astype(np.int32)

    def predict(self, texts: Iterable[str], threshold: float | None = None) -> np.ndarray:
        """(n, categories) 0/1: each category's probability against its threshold (tuned, or
        0.5), or against `threshold` for all when given."""
        probs = self.predict_proba(texts)
        return self._decide(probs) if threshold is None else (probs >= threshold).astype(np.int32)

    def tune_threshold(self, texts: Iterable[str], labels: Any, *, target_precision: float | None = None,
                       target_recall: float | None = None, metric: str | None = None,
                       positive: Any = None) -> dict[str, Any]:
        """One threshold per category, each meeting the same target on labelled rows the
        adapters did not train on (`AgileClassifier.tune_threshold`). A category whose
        tuning rows hold one class only, or that cannot reach the target, keeps 0.5 and
        says why under "kept"."""
        from toolkit.threshold import check_target, choose_threshold

        target = dict(target_precision=target_precision, target_recall=target_recall, metric=metric)
        check_target(**target)  # a wrong argument is the caller's error; below, only the rows can fail
        y, probs = self._scored_rows(texts, labels, positive, "tune_threshold")
        per: dict[str, Any] = {}
        kept: dict[str, str] = {}
        for j, c in enumerate(self.category_names):
            try:
                per[c] = choose_threshold(y[:, j] == 1, probs[:, j], **target)
            except ValueError as e:
                kept[c] = str(e).removeprefix("threshold: ")
        self.threshold_ = {"per_category": per, "kept": kept}
        return {"per_category": dict(per), "kept": dict(kept)}

    def _scored_rows(self, texts: Iterable[str], labels: Any, positive: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(0/1 label matrix, probabilities) of labelled rows, for `evaluate` / `tune_threshold`."""
        if positive is not None:
            raise ValueError(f"{what}(positive={positive!r}): a multi-label classifier scores each category's "
                             f"{self.class_names[-1]!r} answer; there is no positive class to choose")
        texts, y = self._checked(texts, labels, f"{what}(texts, labels)")
        return y, self.predict_proba(texts)

    def _threshold_problem(self, threshold: Any) -> str | None:
        per = threshold.get("per_category") if isinstance(threshold, dict) else None
        if not isinstance(per, dict) or any(c not in self.category_names or not isinstance(
                t, dict) or not isinstance(t.get("threshold"), (int, float)) for c, t in per.items()):
            return f"needs per_category: {{category: {{threshold: number}}}} over {list(self.category_names)}"
        return None

    def evaluate(self, texts: Iterable[str], labels: Any, *, out_dir: str | Path | None = None,
                 positive: Any = None) -> dict[str, Any]:
        from toolkit.metrics import multilabel_metrics

        y, probs = self._scored_rows(texts, labels, positive, "evaluate")
        m = with_averages(multilabel_metrics(y, probs, list(self.category_names), threshold=self.thresholds()))
        if out_dir is not None:
            from toolkit.io_utils import write_json

            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "metrics.json", m)
            self._plots(y, probs, m, out)
        return m

    def _plots(self, y: np.ndarray, probs: np.ndarray, m: dict[str, Any], out: Path) -> dict[str, str]:
        """roc_curve.png and pr_curve.png in `out`, one curve per category; {name: path}."""
        from toolkit.plots import plot_pr_curve, plot_roc_curve

        curves = {c: (y[:, j], probs[:, j]) for j, c in enumerate(self.category_names)}
        return {"roc_curve": str(plot_roc_curve(curves, None, out / "roc_curve.png", title="ROC per category")),
                "pr_curve": str(plot_pr_curve(curves, None, out / "pr_curve.png",
                                              title="Precision-recall per category"))}
