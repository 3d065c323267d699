"""A finished (or stopped) sweep as a table: one row per trial with its swept
values, its last reported metrics and where its files are; written as CSV,
JSON and Markdown, plus a plot of each trial's metric per epoch."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from toolkit.io_utils import atomic_dir, atomic_path, write_json, write_text
from toolkit.sweep.trial import EPOCH_METRICS, TEST_METRICS, flatten

SHOWN = ("eval_f1", "eval_roc_auc", "eval_pr_auc", "eval_balanced_accuracy", "train_loss",
         "test_f1", "test_roc_auc", "test_pr_auc", "test_balanced_accuracy", "test_fit_seconds")


def _number(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    return x.item() if hasattr(x, "item") else x


def trial_rows(grid: Any, sweep_dir: Path) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """(one row per trial, per-trial per-epoch frames) from a Ray Tune ResultGrid."""
    rows, curves = [], {}
    for result in grid:
        m = result.metrics or {}
        name = Path(result.path).name
        params = flatten(result.config or {})
        status = "error" if result.error else ("finished" if m.get("finished") else
                                               "stopped early" if m else "no report")
        row: dict[str, Any] = {"trial": name, "status": status, **params, "epochs": m.get("epoch")}
        for k in ("step", *EPOCH_METRICS, *(f"test_{t}" for t in TEST_METRICS)):
            if k in m:
                row[k] = _number(m[k])
        row["run_dir"] = str(sweep_dir / "trials" / name)
        row["checkpoint"] = m.get("checkpoint_path")
        if result.error:
            row["error"] = str(result.error).strip().splitlines()[-1][:300]
        rows.append(row)
        df = result.metrics_dataframe
        if df is not None and "epoch" in df:
            curves[name] = df
    return rows, curves


def best_trial(rows: Sequence[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best finished trial by `metric` at its last epoch (any trial if none finished)."""
    pool = [r for r in rows if r["status"] == "finished" and r.get(metric) is not None] or \
        [r for r in rows if r.get(metric) is not None]
    if not pool:
        return None
    return (max if mode == "max" else min)(pool, key=lambda r: r[metric])


def table_columns(rows: Sequence[dict[str, Any]], swept: Sequence[str]) -> list[str]:
    present = {k for r in rows for k in r}
    return ["trial", "status", *swept, "epochs", *[k for k in SHOWN if k in present]]


def write_results(sweep_dir: Path, rows: list[dict[str, Any]], curves: dict[str, pd.DataFrame],
                  swept: Sequence[str], metric: str, mode: str, extra: dict[str, Any]) -> dict[str, Any]:
    """results.csv / results.json / results.md / sweep_<metric>.png in `sweep_dir`."""
    from toolkit.metrics import format_table
    from toolkit.plots import plot_sweep

    best = best_trial(rows, metric, mode)
    cols = table_columns(rows, swept)
    frame = pd.DataFrame(rows)
    with atomic_path(sweep_dir / "results.csv") as tmp:
        frame.to_csv(tmp, index=False)
    summary = {"metric": metric, "mode": mode, "best_trial": best["trial"] if best else None,
               "best": best, "trials": rows, **extra}
    write_json(sweep_dir / "results.json", summary)
    table = format_table([{k: r.get(k) for k in cols} for r in rows], keys=cols)
    write_text(sweep_dir / "results.md", table + "\n")
    if curves:
        labels = {r["trial"]: r["trial"] + "".join(f", {k.rsplit('.', 1)[-1]}={r.get(k)}" for k in swept)
                  for r in rows}
        plot_sweep({labels.get(k, k): (v["epoch"].tolist(), v[metric].tolist()) for k, v in curves.items()
                    if metric in v}, metric, sweep_dir / f"sweep_{metric}.png",
                   best=labels.get(best["trial"]) if best else None)
    return summary


def export_best(sweep_dir: Path, best: dict[str, Any] | None) -> Path | None:
    """Copy the best trial's saved classifier to `<sweep_dir>/best` (atomically)."""
    if best is None:
        return None
    src = Path(best["run_dir"]) / "classifier"
    if not src.is_dir():
        return None
    target = sweep_dir / "best"
    with atomic_dir(target) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return target
