"""One configuration, end to end: data -> classifier -> fit -> evaluate -> files.

`launch/train.py` is a thin CLI over `run_experiment`, and sweep trials call
the same function, so a trial and a single run can never disagree.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from toolkit.config import RunConfig, dump_config


def build_classifier(cfg: RunConfig, *, progress: bool = True):
    from toolkit.classifier import AgileClassifier

    c = cfg.classifier
    return AgileClassifier(c.labels, model=cfg.model.name, lora=cfg.lora, prompt=c.prompt, verbalizers=c.verbalizers,
                           train=cfg.train, max_length=c.max_length, param_dtype=cfg.model.param_dtype,
                           dtype=cfg.model.dtype, progress=progress, mesh=cfg.mesh, remat=cfg.model.remat)


def run_experiment(cfg: RunConfig, *, progress: bool = True, save_model: bool = True,
                   after_epoch: Callable[..., None] | None = None,
                   inspect_batch: Callable[..., None] | None = None) -> dict[str, Any]:
    """Train and evaluate; writes config.yaml, metrics.json, plots, the misclassified
    table, Orbax checkpoints, a W&B run and (optionally) the classifier into
    `cfg.run_dir`. Every process of a multi-host job runs this; only process 0
    writes files and logs. Returns the test metrics.

    Each epoch is evaluated on the validation rows (`data.validation_size`; none
    when it is 0, never the test rows); the final metrics are always on the test
    rows. `after_epoch` / `inspect_batch` are the training
    loop's hooks (see `toolkit.train.loop.fit`)."""
    from toolkit.train.distributed import initialize

    initialize(cfg.distributed)  # before anything touches a device
    import jax

    from toolkit.data.datasets import load_splits
    from toolkit.io_utils import write_json, write_text
    from toolkit.tracking import Tracker
    from toolkit.train.memory import peak_memory_gb

    main = jax.process_index() == 0
    out = cfg.run_dir
    ckpt_dir = out / "checkpoints"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", dump_config(cfg))
        if not cfg.resume and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)  # a fresh run must not continue an old run's checkpoints
    if cfg.resume and progress and main:
        print(f"resuming from {ckpt_dir}" if ckpt_dir.exists() else f"resume=true but {ckpt_dir} has no "
              "checkpoint yet: starting from step 0")
    train, test, validation = load_splits(cfg.data)
    # Epochs are scored on validation rows only: they rank the best checkpoint and drive
    # ASHA, so test rows there would choose the model on test. No validation split
    # (data.validation_size: 0): no per-epoch eval and no ranking; the last step is kept.
    watch = validation if validation is not None else {"text": None, "label": None}
    clf = build_classifier(cfg, progress=progress)
    with Tracker(cfg.tracking, name=cfg.name, directory=out, config=cfg.to_dict(), main_process=main) as tracker:
        t0 = time.perf_counter()
        clf.fit(train["text"], train["label"], eval_texts=watch["text"], eval_labels=watch["label"],
                checkpoint_dir=ckpt_dir if cfg.checkpoint.enabled else None, checkpoint=cfg.checkpoint,
                resume=cfg.resume, tracker=tracker, run_config=cfg.to_dict(), after_epoch=after_epoch,
                inspect_batch=inspect_batch)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = clf.evaluate(test["text"], test["label"], out_dir=out if main else None)
        eval_s = time.perf_counter() - t0
        peak_gb, peak_what = peak_memory_gb()
        result = {
            "name": cfg.name, "model": cfg.model.name, "train_size": len(train), "test_size": len(test),
            "validation_size": 0 if validation is None else len(validation),
            **{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
            "fit_seconds": fit_s, "eval_seconds": eval_s, "examples_per_s_eval": len(test) / max(eval_s, 1e-9),
            "num_devices": jax.device_count(), "num_processes": jax.process_count(),
            "device_kind": jax.devices()[0].device_kind, "peak_memory_gb": peak_gb, "peak_memory_source": peak_what,
            "history": clf.history, "confusion_matrix": metrics.get("confusion_matrix"),
        }
        tracker.summary({f"test/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        tracker.log_images({"test/confusion_matrix": out / "confusion_matrix.png", "test/roc_curve": out / "roc_curve.png"},
                           step=clf.history[-1]["step"] if clf.history else 0)
    if main:
        write_json(out / "metrics.json", result)
    if save_model:
        clf.save(out / "classifier")
    return result


def main_table(result: dict[str, Any]) -> str:
    from toolkit.metrics import format_table

    keys = ["train_size", "test_size", "accuracy", "balanced_accuracy", "f1", "roc_auc", "pr_auc",
            "share_predicted_positive", "fit_seconds"]
    return format_table([{k: result.get(k) for k in keys}], keys=keys)

