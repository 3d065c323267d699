"""One row per sweep trial, from a local sweep directory or from W&B: what a size comparison needs.

A row: the model, the training-set size, the swept values, the test metrics, the
validation metric the sweep selected on, speed (seconds per step, tokens/s),
peak memory, and cost in device-hours (fit time x devices).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import yaml

TEST_METRICS = ("f1", "roc_auc", "pr_auc", "balanced_accuracy", "share_predicted_positive")


class ReportError(ValueError):
    """A sweep directory or W&B path that cannot be reported on; the message says why."""


def _speed(history: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(seconds per step, tokens/s), medians over epochs; the first epoch (compilation) is
    left out when there are later ones."""
    step_s, tok_s, prev = [], [], 0
    for i, h in enumerate(history):
        steps, prev = h["step"] - prev, h["step"]
        if i == 0 and len(history) > 1:
            continue
        if steps > 0 and h.get("epoch_seconds"):
            step_s.append(h["epoch_seconds"] / steps)
        if h.get("tokens_per_s"):
            tok_s.append(h["tokens_per_s"])
    return (statistics.median(step_s) if step_s else None, statistics.median(tok_s) if tok_s else None)


def _row(trial: dict[str, Any], metrics: dict[str, Any], config: dict[str, Any], params: list[str],
         select: str) -> dict[str, Any]:
    step_s, tok_s = _speed(metrics.get("history", []))
    fit_s, devices = metrics.get("fit_seconds"), metrics.get("num_devices") or 1
    return {
        "trial": trial["trial"], "status": trial.get("status", "finished"),
        "model": (config.get("model") or {}).get("name") or metrics.get("model"),
        "train_size": metrics.get("train_size") or (config.get("data") or {}).get("train_size"),
        "params": {p: trial.get(p) for p in params},
        **{f"test_{k}": metrics.get(k, trial.get(f"test_{k}")) for k in TEST_METRICS},
        "select_metric": select, "select_value": trial.get(select),
        "step_seconds": step_s, "tokens_per_s": tok_s,
        "peak_memory_gb": metrics.get("peak_memory_gb"), "fit_seconds": fit_s, "num_devices": devices,
        "device_kind": metrics.get("device_kind"),
        "device_hours": fit_s * devices / 3600 if fit_s is not None else None,
    }


def from_sweep_dir(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, sweep facts) of a sweep directory written by `launch/sweep.py`."""
    root = Path(path)
    results = root / "results.json"
    if not results.is_file():
        hint = " (a run directory: report on the sweep that holds it)" if (root / "metrics.json").is_file() else ""
        raise ReportError(f"--sweep {root}: no results.json, so this is not a finished sweep directory{hint}; "
                          "run `python launch/sweep.py --config ...` first, or pass a W&B path entity/project/group")
    try:
        doc = json.loads(results.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{results}: not valid JSON ({e}); was the sweep interrupted while writing it?") from e
    sweep_yaml = root / "sweep.yaml"
    spec = (yaml.safe_load(sweep_yaml.read_text()) or {}) if sweep_yaml.is_file() else {}
    params, select = list(((spec.get("sweep") or {}).get("space") or {})), doc.get("metric", "eval_roc_auc")
    rows = []
    for trial in doc.get("trials", []):
        run_dir = Path(trial.get("run_dir") or "")
        if not (run_dir / "metrics.json").is_file():  # the sweep directory was moved or copied
            run_dir = root / "trials" / run_dir.name
        metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
        rows.append(_row(trial, metrics, config or {}, params, select))
    if not rows:
        raise ReportError(f"{results}: the sweep has no trials yet")
    facts = {"name": doc.get("sweep") or root.name, "source": str(root), "metric": select, "mode": doc.get("mode", "max"),
             "best_trial": doc.get("best_trial"), "params": params, "wall_seconds": doc.get("wall_seconds")}
    return rows, facts


def from_wandb(path: str, api: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, facts) of the runs of a W&B sweep group: `entity/project/group` (or
    `entity/project` for every run). Needs network access and an API key."""
    import wandb

    parts = path.strip("/").split("/")
    if len(parts) not in (2, 3):
        raise ReportError(f"--sweep {path!r}: a W&B path is entity/project or entity/project/group "
                          "(a local path must be an existing sweep directory)")
    api = api or wandb.Api()
    filters = {"group": parts[2]} if len(parts) == 3 else None
    rows = []
    for run in api.runs("/".join(parts[:2]), filters=filters):
        summary, config = dict(run.summary), dict(run.config)
        metrics = {k[len("test/"):]: v for k, v in summary.items() if k.startswith("test/")}
        # Per-epoch records are logged as epoch/<key> at the global step (toolkit.train.loop).
        keys = ["_step", "epoch/epoch_seconds", "epoch/tokens_per_s", "epoch/eval_roc_auc"]
        history = [{"step": r["_step"], **{k[len("epoch/"):]: r.get(k) for k in keys[1:]}}
                   for r in run.scan_history(keys=keys)]
        metrics["history"] = history
        trial = {"trial": run.name, "status": "finished" if run.state == "finished" else run.state,
                 "eval_roc_auc": history[-1]["eval_roc_auc"] if history else None}
        rows.append(_row(trial, metrics, config, [], "eval_roc_auc"))
    if not rows:
        raise ReportError(f"W&B {path}: no runs found")
    return rows, {"name": parts[-1], "source": f"wandb:{path}", "metric": "eval_roc_auc", "mode": "max",
                  "best_trial": None, "params": [], "wall_seconds": None}


def best_per_size(rows: list[dict[str, Any]], metric: str, mode: str = "max") -> list[dict[str, Any]]:
    """Per (model, train size): the finished trial best on the sweep's validation metric
    (not on test: the test rows report, they do not choose)."""
    best: dict[tuple[Any, Any], dict[str, Any]] = {}
    sign = 1 if mode == "max" else -1
    for r in rows:
        if r["status"] != "finished" or r["test_f1"] is None:
            continue
        key = (r["model"], r["train_size"])
        score = r["select_value"] if r["select_value"] is not None else float("-inf") * sign
        if key not in best or sign * score > sign * (best[key]["select_value"] or float("-inf") * sign):
            best[key] = r
    return sorted(best.values(), key=lambda r: (str(r["model"]), r["train_size"] or 0))
