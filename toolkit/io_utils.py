"""Atomic file writes: a reader (or a resumed run) sees the old file or the new
one, never half of one.

Runs get pre-empted (spot VMs, TPU maintenance, Ctrl-C) while they write
metrics.json, plots and checkpoints. Writing straight to the target leaves a
truncated file that later looks valid enough to be trusted or crashes the
resume. Here everything is written to a temp file in the SAME directory (so
`os.replace` is a same-filesystem rename, atomic on POSIX and Windows),
fsync'ed, then renamed over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]


def _read_umask() -> int:
    # mkstemp creates 0600 files; give finished files the usual umask-derived mode
    # instead. Read once at import: os.umask can only be read by setting it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every OS/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path to write `path`'s content to; on clean exit it becomes `path`.

    The temp name keeps `path`'s suffix so that libraries which infer the
    format from the name (matplotlib, pandas, numpy) write the right thing. On
    an exception the temp file is removed and an existing `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield an empty temp directory beside `path`; on clean exit it replaces `path`
    (an existing directory is swapped out, then removed). On an exception the temp
    directory is removed and `path` is untouched: a reader sees the old directory,
    the new one, or none, never a half-written one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, _DIR_MODE)  # mkdtemp's 0700 would make the finished directory private
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            _remove(old)
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)  # a file as well as a directory: no `.NAME.old` is ever left behind
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)


def remove_stale_temps(path: PathLike) -> list[Path]:
    """Remove what killed `atomic_dir` writes of `path` left beside it (`.NAME.tmp-*`,
    `.NAME.old`); returns them. Only safe while holding `path`'s lock
    (`toolkit.run_lock`): otherwise they may be another writer's work in progress."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    stale = [*target.parent.glob(f".{target.name}.tmp-*"), target.with_name(f".{target.name}.old")]
    stale = [p for p in stale if p.exists() or p.is_symlink()]
    for p in stale:
        _remove(p)
    return stale


def atomic_write(path: PathLike, write_fn: Callable[[Path], Any]) -> Path:
    """Call `write_fn(tmp_path)` and atomically move the result to `path`.

    `write_fn` gets a path rather than a file object because most writers
    (`Figure.savefig`, `DataFrame.to_csv`, `np.save`) want one.
    """
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _json_default(obj: Any) -> Any:
    # Metrics and configs are full of numpy scalars/arrays and Paths.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically write `obj` as JSON, accepting numpy scalars/arrays and paths.

    The document is serialised before the temp file is created, so an
    unserialisable object fails without touching the filesystem.
    """
    text = json.dumps(obj, indent=indent, default=_json_default, ensure_ascii=False) + "\n"
    return write_text(path, text)
