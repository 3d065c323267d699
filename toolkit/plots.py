"""Evaluation plots (confusion matrix, ROC, precision-recall) and the error table, as files.

Figures are built as bare `matplotlib.figure.Figure` objects on a
`FigureCanvasAgg`, never through pyplot: pyplot keeps a global registry of
open figures (a leak in long sweeps), picks a GUI backend from the
environment, and is not thread-safe; Ray workers and training loops plot from
background threads. No global backend switch (`matplotlib.use`) is needed.

Every file is written through `toolkit.io_utils.atomic_write`, so a run killed
mid-save leaves the previous file (or none), never a truncated PNG.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from toolkit.io_utils import PathLike, atomic_write, write_text

__all__ = [
    "plot_confusion_matrix",
    "plot_roc_curve",
    "plot_pr_curve",
    "write_misclassified",
]

Curve = Tuple[Any, Any]
CurvesOrLabels = Union[Any, Mapping[str, Curve]]

DPI = 100
_LABEL_WIDTH = 16  # characters per line of a wrapped tick label
_LABEL_LINES = 3  # lines kept before a label is cut with an ellipsis
_MD_TEXT_CHARS = 300  # the CSV keeps full texts; the Markdown view stays readable


def _save(fig: Figure, path: PathLike) -> Path:
    FigureCanvasAgg(fig)  # attaches itself to fig: PNG rendering without any backend switch
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi))


def _wrap_label(label: str) -> str:
    lines = textwrap.wrap(str(label), _LABEL_WIDTH, break_long_words=True) or [""]
    if len(lines) > _LABEL_LINES:
        lines = lines[:_LABEL_LINES]
        lines[-1] = lines[-1][: _LABEL_WIDTH - 1] + "…"
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Confusion matrix


def _confusion_cells(cm: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
    """Row-normalised shares (the colour) and "count\\n(row %)" texts.

    Colour follows the row share, not the count, so a rare class's recall is
    as visible as a frequent one's.
    """
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)
    texts = [
        [f"{cm[i, j]}\n({100 * share[i, j]:.1f}%)" if totals[i, 0] else f"{cm[i, j]}" for j in range(cm.shape[1])]
        for i in range(cm.shape[0])
    ]
    return share, texts


def plot_confusion_matrix(cm: Any, labels: Sequence[str], path: PathLike, *, title: str | None = None) -> Path:
    """Write a confusion-matrix heatmap (rows = true, columns = predicted) to a PNG.

    Cells show the count and its share of the true class's row. Long label
    names are wrapped (and cut after a few lines) so that the matrix itself
    keeps its space; the figure grows with the number of classes.
    """
    cm = np.asarray(cm)
    n = len(labels)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n} labels")
    cm = cm.astype(np.int64)
    share, texts = _confusion_cells(cm)
    wrapped = [_wrap_label(label) for label in labels]

    side = 2.5 + 0.9 * n
    fig = Figure(figsize=(side + 0.5, side + 0.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fontsize = max(6.0, 11.0 - 0.4 * n)
    for i in range(n):
        for j in range(n):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, texts[i][j], ha="center", va="center", color=color, fontsize=fontsize)
    ax.set_xticks(range(n), wrapped, rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center",
                  rotation_mode="anchor", fontsize=fontsize + 1)
    ax.set_yticks(range(n), wrapped, fontsize=fontsize + 1)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title or f"Confusion matrix (n = {int(cm.sum())})")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# ROC / precision-recall


def _as_binary(y_true: Any, scores: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"{name}: y_true and scores must be 1-D of the same length; got {y.shape} and {s.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name}: y_true must be binary 0/1 (1 = the positive class)")
    return y.astype(np.int64), s


def _normalise_curves(y_true: CurvesOrLabels, scores: Any, label: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if isinstance(y_true, Mapping):
        if scores is not None:
            raise ValueError("pass scores=None when y_true is a mapping of name -> (y_true, scores)")
        if not y_true:
            raise ValueError("no curves to plot")
        return {str(name): _as_binary(*curve, name=str(name)) for name, curve in y_true.items()}
    if scores is None:
        raise ValueError("scores is required for a single curve")
    name = label or ""
    return {name: _as_binary(y_true, scores, name=name or "curve")}


def _one_class(y: np.ndarray) -> bool:
    return y.min() == y.max()


def _roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr, f"AUC = {roc_auc_score(y, s):.3f}"


def _pr(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    precision, recall, _ = precision_recall_curve(y, s)
    return recall, precision, f"AP = {average_precision_score(y, s):.3f}"


def _roc_chance(ax: Axes, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")


def _pr_chance(ax: Axes, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    # A random ranking's precision is the positive rate: the PR "diagonal".
    rates = {round(float(y.mean()), 3) for y, _ in curves.values()}
    for rate in sorted(rates):
        ax.axhline(rate, linestyle="--", color="grey", linewidth=1, label=f"chance ({rate:.3f} positive)")


@dataclasses.dataclass(frozen=True)
class _CurveKind:
    """What differs between ROC and PR plots; everything else is `_plot_curves`."""

    compute: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, str]]
    chance: Callable[[Axes, Mapping[str, tuple[np.ndarray, np.ndarray]]], None]
    axis_labels: tuple[str, str]
    title: str
    drawstyle: str
    legend_loc: str


_ROC = _CurveKind(_roc, _roc_chance, ("False positive rate", "True positive rate"), "ROC curve", "default", "lower right")
# Steps, as sklearn draws it: interpolating precision linearly would be optimistic.
_PR = _CurveKind(_pr, _pr_chance, ("Recall", "Precision"), "Precision-recall curve", "steps-post", "lower left")


def _plot_curves(
    kind: _CurveKind,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: PathLike,
    title: str | None,
    point: tuple[float, float, str] | None = None,
) -> Path:
    """One line per curve with its score in the legend, plus the chance line.

    A curve whose y_true holds one class has no ROC/PR; it is listed in the
    legend as undefined instead of failing the whole report at the end of a run.
    """
    fig = Figure(figsize=(5.5, 5.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for name, (y, s) in curves.items():
        prefix = f"{name}: " if name else ""
        if _one_class(y):
            ax.plot([], [], label=f"{prefix}undefined (one class in y_true)")
            continue
        x, yv, score = kind.compute(y, s)
        ax.plot(x, yv, linewidth=2, label=f"{prefix}{score}", drawstyle=kind.drawstyle)
    kind.chance(ax, curves)
    if point is not None:
        ax.plot([point[0]], [point[1]], "o", color="black", markersize=7, label=point[2], zorder=5)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(kind.axis_labels[0])
    ax.set_ylabel(kind.axis_labels[1])
    ax.set_title(title or kind.title)
    ax.grid(alpha=0.3)
    ax.legend(loc=kind.legend_loc, fontsize="small")
    return _save(fig, path)


def plot_roc_curve(
    y_true: CurvesOrLabels,
    scores: Any,
    path: PathLike,
    *,
    title: str | None = None,
    label: str | None = None,
) -> Path:
    """Write a binary ROC curve, AUC in the legend, chance diagonal dashed.

    To compare runs on one plot pass a mapping name -> (y_true, scores) as
    `y_true` and `scores=None`: `plot_roc_curve({"r=4": (y, s4), "r=16": (y, s16)}, None, "roc.png")`.
    `y_true` is 0/1 with 1 = positive; `scores` its probability (or any score).
    """
    return _plot_curves(_ROC, _normalise_curves(y_true, scores, label), path, title)


def plot_pr_curve(
    y_true: CurvesOrLabels,
    scores: Any,
    path: PathLike,
    *,
    title: str | None = None,
    label: str | None = None,
    point: tuple[float, float, str] | None = None,
) -> Path:
    """Write a precision-recall curve, average precision in the legend.

    Same arguments as `plot_roc_curve`. Worth having next to ROC when
    positives are rare (hate speech, fraud): ROC stays flattering there, PR
    does not. The dashed chance line is the positive rate. `point` = (recall,
    precision, label) marks an operating point (a chosen threshold).
    """
    return _plot_curves(_PR, _normalise_curves(y_true, scores, label), path, title, point)


# ---------------------------------------------------------------------------
# Error table


def plot_sweep(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], metric: str, path: PathLike, *,
               best: str | None = None) -> Path:
    """One line per trial: `metric` against epoch. Trials an early-stopping scheduler
    cut short end early, which is the point of the picture; the best trial is bold."""
    fig = Figure(figsize=(7.0, 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for name, (epochs, values) in sorted(curves.items()):
        pts = [(e, v) for e, v in zip(epochs, values) if v is not None and not (isinstance(v, float) and np.isnan(v))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", linewidth=3 if name == best else 1.2, label=name + (" (best)" if name == best else ""))
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, one line per trial")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="x-small")
    return _save(fig, path)


def _md_escape(value: Any) -> str:
    text = f"{value:.3f}" if isinstance(value, (float, np.floating)) else str(value)
    text = " ".join(text.split())  # newlines would end the table row
    if len(text) > _MD_TEXT_CHARS:
        text = text[: _MD_TEXT_CHARS - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _markdown_table(df: pd.DataFrame) -> str:
    frame = df.reset_index() if df.index.name else df
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_misclassified(df: pd.DataFrame, path: PathLike) -> tuple[Path, Path]:
    """Write the error table as CSV (full texts, for tools) and a `.md` sibling (for reading).

    `path`'s suffix is replaced: `errors` or `errors.csv` gives `errors.csv`
    and `errors.md`. Returns both paths.
    """
    base = Path(path)
    csv_path, md_path = base.with_suffix(".csv"), base.with_suffix(".md")
    keep_index = df.index.name is not None
    atomic_write(csv_path, lambda tmp: df.to_csv(tmp, index=keep_index, encoding="utf-8"))
    write_text(md_path, _markdown_table(df))
    return csv_path, md_path
