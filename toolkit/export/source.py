"""Find the trained classifier behind a directory the user points an export at.

People point at whatever they have: the classifier a run saved, the run directory
itself, a sweep (meaning its best trial), or only the Orbax checkpoints of a run
that never finished. Each is recognised by its marker file, checked in this order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.export.errors import ExportError
from toolkit.saved_files import META as CLASSIFIER_META, is_saved
from toolkit.storage import location


def describe_kinds() -> str:
    return ("a saved classifier (classifier.json), a run directory (classifier/ or checkpoints/), "
            "a sweep directory (best/), or a run's Orbax checkpoints/ directory")


def classifier_dir(path: Path) -> Path | None:
    """The saved-classifier directory `path` stands for, if any."""
    for candidate in (path, path / "classifier", path / "best"):
        if is_saved(candidate):
            return candidate
    return None


def orbax_dir(path: Path) -> Path | None:
    """The Orbax checkpoint directory `path` stands for: step directories with Orbax metadata."""
    for candidate in (path, path / "checkpoints"):
        if candidate.is_dir() and any(s.name.isdigit() and (s / "_CHECKPOINT_METADATA").is_file()
                                      for s in candidate.iterdir()):
            return candidate
    return None


def load_classifier(path: str | Path, *, progress: bool = True, flag: str = "--checkpoint") -> tuple[Any, str]:
    """(classifier, where it came from) for any of the directory kinds above. `flag` is the
    option the path came from, named in the errors (`agile-export --checkpoint`,
    `agile-predict --classifier`)."""
    from toolkit.classifier import AgileClassifier

    root = location(path)  # a local folder, or an object-store URI (gs://...)
    if not root.is_dir():
        raise ExportError(f"{flag} {root}: no such directory; expected {describe_kinds()}")
    found = classifier_dir(root)
    if found is not None:
        try:
            return AgileClassifier.load(found, progress=progress), str(found)
        except (ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{found / CLASSIFIER_META}: not a classifier this toolkit can load: {e}") from e
    ckpt = orbax_dir(root)
    if ckpt is not None:
        return from_orbax(ckpt, progress=progress)
    listing = sorted(p.name for p in root.iterdir())[:8]
    raise ExportError(f"{flag} {root} is not an agile-toolkit checkpoint: expected {describe_kinds()}; "
                      f"it holds {listing or 'nothing'}")


def from_orbax(directory: Path, *, progress: bool = True) -> tuple[Any, str]:
    """The classifier of a run's best (else latest) Orbax checkpoint, rebuilt from the run
    config the checkpoint carries."""
    from toolkit.config import ConfigError, RunConfig, from_dict
    from toolkit.classifier import AgileClassifier
    from toolkit.train.loop import new_state

    checkpointer = _checkpointer_as_written(directory)
    try:
        best = checkpointer.best_step()  # None when no step was ranked (a run without validation rows)
        step = best if best is not None else checkpointer.latest_step()
        meta = checkpointer.read_meta(step)
        try:
            cfg = from_dict(RunConfig, meta.get("config") or {}, where=f"{directory}/{step} run config")
        except ConfigError as e:
            raise ExportError(f"{directory}/{step}: the checkpoint's run config cannot be read: {e}") from e
        if not meta.get("config"):
            raise ExportError(f"{directory}/{step}: the checkpoint carries no run config, so the model it "
                              "adapts is unknown; export the run's classifier/ directory instead")
        clf = AgileClassifier.from_config(cfg, progress=progress)
        like = new_state(clf.placement, cfg.train, [100])  # the tree's structure, whatever the step count
        state, _ = checkpointer.restore(like.tree(), step)
    finally:
        checkpointer.close()
    clf.use_adapters(state["lora"], history=meta.get("history", []))
    return clf, f"{directory}/{step}"


def _checkpointer_as_written(directory: Path) -> Any:
    """A Checkpointer ranking steps by the run's own `checkpoint.best_metric` / `best_mode`
    (read from the latest step's run config), so 'best' means what it meant in training."""
    from toolkit.config import CheckpointSection, ConfigError, from_dict
    from toolkit.train.checkpoint import Checkpointer

    first = Checkpointer(directory)
    if first.latest_step() is None:
        return first
    section = (first.read_meta().get("config") or {}).get("checkpoint")
    if not section:
        return first
    try:
        cfg = from_dict(CheckpointSection, section, where=f"{directory} run config: checkpoint")
    except ConfigError as e:
        first.close()
        raise ExportError(f"{directory}: the checkpoint's run config cannot be read: {e}") from e
    if cfg == first.cfg:
        return first
    first.close()
    return Checkpointer(directory, cfg)
