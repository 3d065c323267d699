"""What a run may do to its run dir, and how a failed run puts it back.

A run dir holds a user's work (checkpoints, metrics, the trained classifier), so:

- a new run into a dir that already holds something is refused unless the config
  says `resume=true` (continue it) or `overwrite=true` (replace it);
- nothing is written until the run has validated everything it can (the caller
  calls `begin` only then), and `config.yaml` is written by `begin`;
- `overwrite=true` moves the old dir aside (one rename, atomic) and deletes it only
  once the new run has saved its first checkpoint (`progress_saved`);
- a run that fails before saving any checkpoint is rolled back (`rollback`): a new
  dir is removed, a replaced one moved back, a resumed one loses what this attempt
  added and gets its old `config.yaml` back. A run that failed after saving a
  checkpoint keeps it: that is resumable work, not a leftover.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from toolkit.io_utils import atomic_write, write_text


class RunDirError(RuntimeError):
    """The run dir cannot be used as asked; the message says which option to use instead."""


CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"


def _entries(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def _steps(d: Path) -> set[str]:
    return {n for n in _entries(d) if n.isdigit()}


def check_target(run_dir: "str | Path", *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, a new run into a dir (or URI) that holds something."""
    from toolkit.storage import has_files, is_uri

    if is_uri(run_dir):
        if resume or not has_files(run_dir):
            return
        raise RunDirError(f"run dir {run_dir} already holds a run; pass resume=true to continue it, or choose "
                          "another name= (overwrite=true cannot replace a run on an object store)")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run dir {run_dir} is a file, not a directory; choose another name= or output_dir=")
    if resume or overwrite or not _entries(run_dir):
        return
    raise RunDirError(f"run dir {run_dir} already holds a run ({', '.join(sorted(_entries(run_dir))[:6])}); "
                      "pass resume=true to continue it, overwrite=true to replace it, or choose another name=")


class RunDirTransaction:
    """`begin` -> (`progress_saved`)* -> `finish`, or `rollback` on a failure.

    Only process 0 of a job makes one of these: only it writes files."""

    def __init__(self, run_dir: Path, *, resume: bool, overwrite: bool):
        self.dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite and not resume
        self.aside: Path | None = None
        self.existed = self.dir.is_dir()
        self.before: set[str] = set()
        self.old_config: bytes | None = None
        self.steps_before: set[str] = set()
        self.saved = False

    def begin(self, config_text: str) -> None:
        """The run has started: move a replaced dir aside, create the dir, write config.yaml."""
        for stray in self.dir.parent.glob(f".{self.dir.name}.replaced-*"):  # left by a killed overwrite
            print(f"note: removing {stray}, the old run a killed overwrite=true left aside", file=sys.stderr)
            shutil.rmtree(stray, ignore_errors=True)
        if self.overwrite and self.existed and _entries(self.dir):
            self.aside = self.dir.with_name(f".{self.dir.name}.replaced-{os.getpid()}")
            os.replace(self.dir, self.aside)
        elif self.existed:
            self.before = _entries(self.dir)
            config = self.dir / CONFIG_FILE
            self.old_config = config.read_bytes() if config.is_file() else None
            self.steps_before = _steps(self.dir / CHECKPOINTS)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.dir / CONFIG_FILE, config_text)

    def progress_saved(self) -> None:
        """A checkpoint of this run is on disk: from now on a failure keeps the dir, and
        the run it replaces can go."""
        self.saved = True
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def finish(self) -> None:
        self.progress_saved()

    def _has_new_checkpoint(self) -> bool:
        return bool(_steps(self.dir / CHECKPOINTS) - self.steps_before)

    def rollback(self) -> bool:
        """Put the disk back as `begin` found it; False (nothing undone) when this run
        already saved a checkpoint, which `resume=true` continues."""
        if self.saved or self._has_new_checkpoint():
            self.progress_saved()
            print(f"note: {self.dir} keeps the checkpoints this run saved before it failed; "
                  "continue it with resume=true", file=sys.stderr)
            return False
        if not self.existed or self.aside is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.aside is not None:
                os.replace(self.aside, self.dir)
                self.aside = None
            return True
        for name in _entries(self.dir) - self.before:  # a resumed dir: only what this attempt added goes
            p = self.dir / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        if self.old_config is not None:
            old = self.old_config
            atomic_write(self.dir / CONFIG_FILE, lambda tmp: tmp.write_bytes(old))
        else:
            (self.dir / CONFIG_FILE).unlink(missing_ok=True)
        return True
