"""One configuration, end to end: data -> classifier -> fit -> evaluate -> files.

`launch/train.py` is a thin CLI over `run_experiment`, and sweep trials call
the same function, so a trial and a single run can never disagree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from toolkit.config import RunConfig, dump_config


def build_classifier(cfg: RunConfig, *, progress: bool = True):
    from toolkit.classifier import AgileClassifier

    c = cfg.classifier
    return AgileClassifier(c.labels, model=cfg.model.name, lora=cfg.lora, prompt=c.prompt, verbalizers=c.verbalizers,
                           train=cfg.train, max_length=c.max_length, param_dtype=cfg.model.param_dtype,
                           dtype=cfg.model.dtype, progress=progress)


def run_experiment(cfg: RunConfig, *, progress: bool = True, save_model: bool = True) -> dict[str, Any]:
    """Train and evaluate; writes config.yaml, metrics.json, plots, the misclassified
    table and (optionally) the classifier into `cfg.run_dir`. Returns the metrics."""
    from toolkit.data.datasets import load_splits
    from toolkit.io_utils import write_json, write_text

    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", dump_config(cfg))
    train, test = load_splits(cfg.data)
    clf = build_classifier(cfg, progress=progress)
    t0 = time.perf_counter()
    clf.fit(train["text"], train["label"], eval_texts=test["text"], eval_labels=test["label"])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = clf.evaluate(test["text"], test["label"], out_dir=out)
    eval_s = time.perf_counter() - t0
    result = {
        "name": cfg.name, "model": cfg.model.name, "train_size": len(train), "test_size": len(test),
        **{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
        "fit_seconds": fit_s, "eval_seconds": eval_s, "examples_per_s_eval": len(test) / max(eval_s, 1e-9),
        "history": clf.history, "confusion_matrix": metrics.get("confusion_matrix"),
    }
    write_json(out / "metrics.json", result)
    if save_model:
        clf.save(out / "classifier")
    return result


def main_table(result: dict[str, Any]) -> str:
    from toolkit.metrics import format_table

    keys = ["train_size", "test_size", "accuracy", "balanced_accuracy", "f1", "roc_auc", "pr_auc",
            "share_predicted_positive", "fit_seconds"]
    return format_table([{k: result.get(k) for k in keys}], keys=keys)

