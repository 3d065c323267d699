"""One configuration, end to end: data -> classifier -> fit -> evaluate -> files.

`launch/train.py` is a thin CLI over `run_experiment`, and sweep trials call
the same function, so a trial and a single run can never disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Sequence

from toolkit.config import RunConfig, dump_config

log = logging.getLogger(__name__)


def run_experiment(cfg: RunConfig, *, progress: bool = True, save_model: bool = True,
                   callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train and evaluate; writes config.yaml, metrics.json, plots, the misclassified
    table, Orbax checkpoints, a W&B run and (optionally) the classifier into
    `cfg.run_dir`. Every process of a multi-host job runs this; only process 0
    writes files and logs (and holds the run dir's lock). Returns the test metrics.

    Nothing is written before everything that can be checked has been: the lock, the
    run dir (an existing run needs `resume` or `overwrite`), the data and its labels,
    the model, the mesh, the prompt's fit and a resumed run's config. A run that then
    fails before its first checkpoint leaves the disk as it found it (`toolkit.run_dir`).

    Each epoch is evaluated on the validation rows (`data.validation_size`; none
    when it is 0, never the test rows); the final metrics are always on the test
    rows. `callbacks` (`toolkit.train.callbacks`) join the run's own (tracking,
    checkpoints) and those its config names (`callbacks:`), in that order."""
    from toolkit.train.distributed import initialize

    initialize(cfg.distributed)  # before anything touches a device
    import jax

    from toolkit.run_dir import RunDirTransaction, check_target
    from toolkit.run_lock import DirLock

    from toolkit.storage import barrier, is_uri

    main = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        if main:  # on an object store the lock guards the local mirror: one writer per host
            stack.enter_context(DirLock(cfg.run_dir, what="run dir", instead=(
                "Wait for that run to finish, or choose another name= (two runs must never share a run dir)")))
            check_target(cfg.run_location, resume=cfg.resume, overwrite=cfg.overwrite)
        clf, splits = _prepare(cfg, progress=progress)
        if main and is_uri(cfg.output_dir):
            _stage(cfg)
        txn = RunDirTransaction(cfg.run_dir, resume=cfg.resume, overwrite=cfg.overwrite) if main else None
        try:
            if txn is not None:
                txn.begin(dump_config(cfg))
            barrier("agile-toolkit run dir ready")  # no host opens checkpoints/ before process 0 has prepared it
            result = _train_and_evaluate(cfg, clf, splits, txn, save_model=save_model, callbacks=callbacks)
        except BaseException:
            if txn is not None:
                txn.rollback()
            raise
        if txn is not None:
            txn.finish()
    return result


# A URI run dir's files, in publishing order: the classifier's marker, then the run's own.
RUN_MARKERS = ("classifier/classifier.json", "metrics.json")


def _stage(cfg: RunConfig) -> None:
    """A run on an object store writes into a fresh local mirror (`cfg.run_dir`): empty for
    a new run, the run's files but its checkpoints (Orbax reads those in place) on resume."""
    import shutil

    from toolkit.storage import download, has_files

    if cfg.resume and has_files(cfg.run_location):
        download(cfg.run_location, cfg.run_dir, skip=("checkpoints",))
    elif cfg.run_dir.exists():
        shutil.rmtree(cfg.run_dir)


def _publish(cfg: RunConfig) -> None:
    """Copy a URI run's local files to the URI (nothing to do for a local run)."""
    from toolkit.storage import is_uri, upload

    if is_uri(cfg.output_dir):
        upload(cfg.run_dir, cfg.run_location, last=RUN_MARKERS)


def _prepare(cfg: RunConfig, *, progress: bool):
    """Everything checked before the run touches the disk: (classifier with its model
    loaded, splits). Raises ConfigError / DataError / CheckpointError naming the key,
    file and row."""
    import jax

    from toolkit.config import ConfigError
    from toolkit.data.datasets import load_splits

    ckpt_dir = cfg.checkpoint_location
    if cfg.resume and progress and jax.process_index() == 0:
        print(f"resuming from {ckpt_dir}" if ckpt_dir.exists() else f"resume=true but {ckpt_dir} has no "
              "checkpoint yet: starting from step 0")
    try:
        cfg.mesh.sizes(jax.device_count())
    except ValueError as e:
        raise ConfigError(f"mesh: {e}") from None
    from toolkit.classifier import AgileClassifier, PromptFitError

    splits = load_splits(cfg.data, cfg.classifier.categories)
    categories = None
    if cfg.data.multilabel:
        from toolkit.data.datasets import category_columns

        check_split_categories(cfg, splits)
        categories = category_columns(splits.train)
    else:
        check_split_labels(cfg, splits)
    clf = AgileClassifier.from_config(cfg, progress=progress, categories=categories)  # of classifier.task's kind
    try:
        clf._ensure_model()
    except PromptFitError as e:
        raise ConfigError(f"classifier.{e.key}: {e}") from None
    if cfg.warm_start is not None:
        _warm_start(clf, cfg.warm_start)
    if cfg.resume and cfg.checkpoint.enabled:
        check_resume(cfg, ckpt_dir)
    return clf, splits


def _warm_start(clf: Any, where: str) -> None:
    """`warm_start=DIR`: the run's adapters start as the saved classifier's there."""
    from toolkit.config import ConfigError
    from toolkit.export.source import classifier_dir
    from toolkit.saved_files import SavedFileError
    from toolkit.storage import location

    found = classifier_dir(location(where))
    if found is None:
        raise ConfigError(f"warm_start: {where} holds no saved classifier (no classifier.json in it, its "
                          "classifier/ or best/); point at a finished run, its classifier/ or a sweep")
    try:
        clf.start_from(found)
    except (SavedFileError, ValueError) as e:
        raise ConfigError(f"warm_start: {e}") from None


# What must match to continue a run (a new mesh, name or tracker is fine: Orbax reshards).
_RESUME_KEYS = ("model", "lora", "data", "classifier", "train")
# ... except these, which change how a run continues or reports, not what it trains on or
# in what order: a lower learning rate after a divergence, a bigger eval batch, another
# logging interval, the data's new location. Each change is logged.
RESUME_MAY_CHANGE = frozenset({"train.learning_rate", "train.eval_batch_size", "train.log_every_steps",
                               "train.peak_tflops", "data.local_dir", "data.cache_dir"})


def check_same_run(saved: dict[str, Any], current: dict[str, Any], where: Any) -> list[str]:
    """The allowed changes between a checkpoint's run config and this one ("key: old -> new");
    raises CheckpointError on any other."""
    if not saved or not current:
        return []
    # A key the checkpoint lacks was added to the config after it was written: it had its default.
    defaults = RunConfig().to_dict()

    def old(section: str, k: str) -> Any:
        return (saved.get(section) or {}).get(k, (defaults.get(section) or {}).get(k))

    diff = [(f"{section}.{k}", f"{section}.{k}: {old(section, k)!r} -> {v!r}")
            for section in _RESUME_KEYS for k, v in (current.get(section) or {}).items()
            if old(section, k) != v]
    refused = [text for key, text in diff if key not in RESUME_MAY_CHANGE]
    if refused:
        from toolkit.train.checkpoint import CheckpointError

        raise CheckpointError(f"{where} was written by a different config; resuming would not continue the same run "
                              f"({'; '.join(refused[:5])}). Restore those values or start fresh with resume=false "
                              f"(only {', '.join(sorted(RESUME_MAY_CHANGE))} may change on resume)")
    allowed = [text for _, text in diff]
    if allowed:
        log.warning("resuming %s with changed settings: %s", where, "; ".join(allowed))
    return allowed


def check_split_labels(cfg: RunConfig, splits: Any) -> None:
    """Every label is a class of `classifier.labels`, reported at its row of the data FILE
    (1-based, the line too when a quoted CSV field spans lines) rather than at its place
    after the shuffle; and every class has training rows."""
    import numpy as np

    from toolkit.data.sources import DataError, file_row

    labels = list(cfg.classifier.labels)
    parts = [(splits.train, cfg.data.source), (splits.test, cfg.data.test_path or cfg.data.source)]
    if splits.validation is not None:
        parts.append((splits.validation, cfg.data.source))
    bad: list[tuple[str, int, Any]] = []
    for frame, file in parts:
        wrong = frame[~frame["label"].isin(labels)]
        bad += [(file, int(i), v) for i, v in zip(wrong.index, wrong["label"]) if isinstance(i, (int, np.integer))]
    if bad:
        file, pos, value = min(bad, key=lambda b: (b[0] != cfg.data.source, b[1]))
        raise DataError(f"{file}: {file_row(file, pos, cfg.data.delimiter)}, column {cfg.data.label_column!r}: label {value!r} is not "
                        f"one of classifier.labels {labels}. Fix the value, add it to classifier.labels, or map raw "
                        "values to class names with data.label_names")
    counts = splits.train["label"].value_counts().to_dict()
    empty = [c for c in labels if not counts.get(c)]
    if empty:
        raise DataError(f"{cfg.data.source}: class {empty[0]!r} of classifier.labels has no training rows (rows per "
                        f"class: { {c: int(counts.get(c, 0)) for c in labels} }); add examples or remove the class")


def check_split_categories(cfg: RunConfig, splits: Any) -> None:
    """Every category of a multi-label run has positive and negative training rows: one
    without either cannot be learnt, and its question would only echo the prior."""
    from toolkit.data.datasets import category_columns
    from toolkit.data.sources import DataError

    counts = splits.train[category_columns(splits.train)].sum()
    n = len(splits.train)
    flat = [c for c, k in counts.items() if k in (0, n)]
    if flat:
        raise DataError(f"{cfg.data.source}: category {flat[0]!r} is {'never' if counts[flat[0]] == 0 else 'always'} "
                        f"set in the {n} training rows (positives per category: "
                        f"{ {c: int(k) for c, k in counts.items()} }); add examples, a larger data.train_size, or "
                        "leave it out of classifier.categories")


def _labels(frame: Any) -> Any:
    """What `fit` / `evaluate` take as labels: the class column, or the 0/1 category matrix."""
    from toolkit.data.datasets import category_columns

    return frame["label"] if "label" in frame.columns else frame[category_columns(frame)].to_numpy()


def check_resume(cfg: RunConfig, ckpt_dir: Any) -> None:
    """Refuse a resume whose config differs from the checkpoint's, before anything is written
    (the training loop checks again when it restores)."""
    from toolkit.train.checkpoint import Checkpointer

    if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
        return
    ck = Checkpointer(ckpt_dir, cfg.checkpoint)
    try:
        meta = ck.read_meta() if ck.latest_step() is not None else {}
    finally:
        ck.close()
    check_same_run(meta.get("config") or {}, cfg.to_dict(), ckpt_dir)


def _train_and_evaluate(cfg: RunConfig, clf: Any, splits: Any, txn: Any, *, save_model: bool,
                        callbacks: Sequence[Any]) -> dict[str, Any]:
    import jax

    from toolkit.train.callbacks import AfterEpoch, Checkpointing, Tracking, from_import_path

    from toolkit.io_utils import write_json
    from toolkit.tracking import Tracker
    from toolkit.train.memory import peak_memory_gb

    from toolkit.storage import location

    main = jax.process_index() == 0
    out = cfg.run_dir
    ckpt_dir = cfg.checkpoint_location
    train, test, validation = splits
    # Epochs are scored on validation rows only: they rank the best checkpoint and drive
    # ASHA, so test rows there would choose the model on test. No validation split
    # (data.validation_size: 0): no per-epoch eval and no ranking; the last step is kept.
    watch_texts, watch_labels = (validation["text"], _labels(validation)) if validation is not None else (None, None)

    def epoch_saved(record: dict[str, Any], step_dir: Any) -> None:
        if txn is not None and step_dir is not None and location(step_dir).is_dir():
            if not txn.saved:
                _publish(cfg)  # a URI run's config.yaml joins its first checkpoint
            txn.progress_saved()  # a replaced run may go now; a failure keeps this one

    with Tracker(cfg.tracking, name=cfg.name, directory=out, config=cfg.to_dict(), main_process=main) as tracker:
        own: list[Any] = [Tracking(tracker, cfg.train.log_every_steps, cfg.train.peak_tflops)]
        if cfg.checkpoint.enabled:
            from toolkit.train.checkpoint import Checkpointer

            own.append(Checkpointing(Checkpointer(ckpt_dir, cfg.checkpoint), resume=cfg.resume,
                                     run_config=cfg.to_dict(), check_same_run=check_same_run))
        own.append(AfterEpoch(epoch_saved))
        named = [from_import_path(path)(cfg) for path in cfg.callbacks]
        t0 = time.perf_counter()
        clf.fit(train["text"], _labels(train), eval_texts=watch_texts, eval_labels=watch_labels,
                callbacks=[*own, *callbacks, *named])
        fit_s = time.perf_counter() - t0
        threshold = None
        if cfg.classifier.threshold is not None:  # chosen on validation rows; the test rows are scored at it
            threshold = clf.tune_threshold(validation["text"], _labels(validation),
                                           **dataclasses.asdict(cfg.classifier.threshold))
        t0 = time.perf_counter()
        metrics = clf.evaluate(test["text"], _labels(test), out_dir=out if main else None)
        eval_s = time.perf_counter() - t0
        peak_gb, peak_what = peak_memory_gb()
        result = {
            "name": cfg.name, "model": cfg.model.name, "train_size": len(train), "test_size": len(test),
            "validation_size": 0 if validation is None else len(validation),
            **{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
            "fit_seconds": fit_s, "eval_seconds": eval_s, "examples_per_s_eval": len(test) / max(eval_s, 1e-9),
            "num_devices": jax.device_count(), "num_processes": jax.process_count(),
            "device_kind": jax.devices()[0].device_kind, "peak_memory_gb": peak_gb, "peak_memory_source": peak_what,
            "history": clf.history, "confusion_matrix": metrics.get("confusion_matrix"), "threshold": threshold,
            "per_category": metrics.get("per_category"),
        }
        tracker.summary({f"test/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        images = {"test/confusion_matrix": out / "confusion_matrix.png", "test/roc_curve": out / "roc_curve.png",
                  "test/pr_curve": out / "pr_curve.png"}
        tracker.log_images({k: p for k, p in images.items() if p.is_file()},
                           step=clf.history[-1]["step"] if clf.history else 0)
    if main:
        write_json(out / "metrics.json", result)
    if save_model:
        clf.save(out / "classifier", overwrite=True)  # a resumed run replaces its own classifier
    if main:
        _publish(cfg)
    return result


def main_table(result: dict[str, Any]) -> str:
    """The run's headline metrics; a multi-label run adds one row per category."""
    from toolkit.metrics import format_table

    if result.get("per_category"):
        keys = ["category", "support", "f1", "roc_auc", "pr_auc"]
        rows = [{"category": c, **m} for c, m in result["per_category"].items()]
        rows.append({"category": "macro", "f1": result["f1_macro"], "roc_auc": result["roc_auc_macro"],
                     "pr_auc": result["pr_auc_macro"]})
        return format_table([{k: r.get(k) for k in keys} for r in rows], keys=keys)
    keys = ["train_size", "test_size", "accuracy", "balanced_accuracy", "f1", "roc_auc", "pr_auc",
            "share_predicted_positive", "fit_seconds"]
    return format_table([{k: result.get(k) for k in keys}], keys=keys)

