"""The size-comparison plots: quality against training-set size, and what each model costs.

Each function writes one PNG and returns its path; one colour per model throughout,
so a reader matches models across plots at a glance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC_TITLES = {"test_f1": "test F1", "test_roc_auc": "test ROC-AUC", "test_pr_auc": "test PR-AUC",
                 "test_balanced_accuracy": "test balanced accuracy"}


def _colors(models: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def _models(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({str(r["model"]) for r in rows})


def metric_vs_size(rows: list[dict[str, Any]], best: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Every finished trial as a dot, and a line through each model's best-on-validation trial per size."""
    models = _models(rows)
    color = _colors(models)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for m in models:
        pts = [(r["train_size"], r[metric]) for r in rows if str(r["model"]) == m and r[metric] is not None]
        if pts:
            ax.scatter(*zip(*pts), color=color[m], alpha=0.35, s=22)
        line = sorted((r["train_size"], r[metric]) for r in best if str(r["model"]) == m and r[metric] is not None)
        if line:
            ax.plot(*zip(*line), marker="o", color=color[m], lw=2, label=f"{m} (best on validation)")
    ax.set_xlabel("training examples")
    ax.set_ylabel(METRIC_TITLES.get(metric, metric))
    ax.set_title(f"{METRIC_TITLES.get(metric, metric)} against training-set size")
    sizes = sorted({r["train_size"] for r in rows if r["train_size"] is not None})
    if sizes:
        ax.set_xticks(sizes)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def best_per_size_bars(best: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Grouped bars: one group per training size, one bar per model, labelled with the value."""
    models = _models(best) or ["-"]
    color = _colors(models)
    sizes = sorted({r["train_size"] for r in best})
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for j, m in enumerate(models):
        for i, n in enumerate(sizes):
            r = next((r for r in best if str(r["model"]) == m and r["train_size"] == n), None)
            if r is None or r[metric] is None:
                continue
            bar = ax.bar(i + (j - (len(models) - 1) / 2) * width, r[metric], width, color=color[m],
                         label=m if i == 0 else None)
            ax.bar_label(bar, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(sizes)), [str(n) for n in sizes])
    ax.set_xlabel("training examples")
    ax.set_ylabel(METRIC_TITLES.get(metric, metric))
    ax.set_ylim(0, 1.08)
    ax.set_title(f"best {METRIC_TITLES.get(metric, metric)} per training size")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def cost_panels(per_model: list[dict[str, Any]], path: Path) -> Path:
    """Four bar panels per model: seconds per step, tokens/s, peak memory, device-hours."""
    panels = [("step_seconds", "seconds per train step"), ("tokens_per_s", "tokens / s (train)"),
              ("peak_memory_gb", "peak memory (GB)"), ("device_hours", "device-hours (all trials)")]
    models = [str(r["model"]) for r in per_model]
    color = _colors(sorted(models))
    fig, axes = plt.subplots(1, 4, figsize=(12.8, 3.4), dpi=110)
    for ax, (key, title) in zip(axes, panels):
        values = [r.get(key) for r in per_model]
        xs = range(len(models))
        bars = ax.bar(xs, [v if v is not None else 0 for v in values], color=[color[m] for m in models])
        ax.bar_label(bars, labels=[f"{v:.3g}" if v is not None else "n/a" for v in values], fontsize=8)
        ax.set_xticks(list(xs), models, rotation=15, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
