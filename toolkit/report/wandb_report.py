"""The same comparison as a W&B Report, built from the runs W&B already holds.

Each sweep trial is a W&B run in a group named after the sweep (toolkit.tracking),
with the run config (`model.name`, `data.train_size`, ...) and test metrics in its
summary (`test/f1`, `test/roc_auc`, `test/fit_seconds`, `test/peak_memory_gb`, ...).
The report's panels are live views of those keys, so it stays current as runs land.
Saving needs network access and an API key; building does not.
"""

from __future__ import annotations

from typing import Any

# Summary keys (written by toolkit.experiment through Tracker.summary) and config keys the panels use.
SUMMARY_KEYS = {"f1": "test/f1", "roc_auc": "test/roc_auc", "pr_auc": "test/pr_auc",
                "balanced_accuracy": "test/balanced_accuracy", "fit_seconds": "test/fit_seconds",
                "peak_memory_gb": "test/peak_memory_gb", "num_devices": "test/num_devices"}
CONFIG_KEYS = {"model": "model.name", "train_size": "data.train_size"}
EPOCH_KEYS = {"tokens_per_s": "epoch/tokens_per_s", "epoch_seconds": "epoch/epoch_seconds",
              "eval_roc_auc": "epoch/eval_roc_auc"}


def build_report(entity: str, project: str, group: str | None, *, title: str | None = None,
                 description: str = "") -> Any:
    """A `wandb_workspaces` Report comparing model sizes over the runs of `group` (all runs if None)."""
    import wandb_workspaces.reports.v2 as wr

    runset = wr.Runset(entity=entity, project=project, name=group or project,
                       filters=f"Metric('Group') == '{group}'" if group else "",
                       groupby=[f"config.{CONFIG_KEYS['model']}"])
    s, c = wr.SummaryMetric, wr.Config

    def quality(metric: str, label: str) -> list[Any]:
        return [wr.ScatterPlot(title=f"{label} against training-set size", x=c(CONFIG_KEYS["train_size"]),
                               y=s(SUMMARY_KEYS[metric])),
                wr.BarPlot(title=f"best {label} per model", metrics=[s(SUMMARY_KEYS[metric])],
                           groupby=c(CONFIG_KEYS["model"]), groupby_aggfunc="max", orientation="v")]

    grid = wr.PanelGrid(runsets=[runset], panels=[
        *quality("f1", "test F1"), *quality("roc_auc", "test ROC-AUC"),
        wr.LinePlot(title="validation ROC-AUC per epoch", y=[EPOCH_KEYS["eval_roc_auc"]],
                    groupby=c(CONFIG_KEYS["model"])),
        wr.BarPlot(title="tokens / s (train)", metrics=[EPOCH_KEYS["tokens_per_s"]], groupby=c(CONFIG_KEYS["model"]),
                   groupby_aggfunc="median", orientation="v"),
        wr.BarPlot(title="peak memory (GB)", metrics=[s(SUMMARY_KEYS["peak_memory_gb"])],
                   groupby=c(CONFIG_KEYS["model"]), groupby_aggfunc="max", orientation="v"),
        wr.BarPlot(title="fit seconds (device-hours = fit s x devices / 3600)", metrics=[s(SUMMARY_KEYS["fit_seconds"])],
                   groupby=c(CONFIG_KEYS["model"]), groupby_aggfunc="sum", orientation="v"),
        wr.RunComparer(diff_only="split"),
    ])
    return wr.Report(project=project, entity=entity, title=title or f"Model sizes: {group or project}",
                     description=description or "F1 / ROC-AUC against training-set size, speed, memory and cost "
                                                "per model, from the sweep's W&B runs.",
                     blocks=[wr.H1("Which model size?"),
                             wr.P("Each point is one trial; the best bars take each model's best run. Test metrics "
                                  "are reported, the sweep chose on validation."), grid])
