"""Where files may live: a local path, or an object-store URI (`gs://`, `s3://`, ...).

URIs go through `etils.epath`, the path layer Orbax itself uses: with TensorFlow
installed `gs://` is `tf.io.gfile`, otherwise (or with `EPATH_USE_TF=false`) fsspec's
`gcsfs` / `s3fs`. Orbax writes checkpoints to `gs://` on its own, through tensorstore.

An object store has no directory rename and no `flock`, which is what the local
atomic writes (`toolkit.io_utils`) and locks (`toolkit.run_lock`) stand on. So the
toolkit's own files are written to a local folder with those guarantees and then
*published*: one object per file (an object write is all-or-nothing), with the
folder's marker file (`classifier.json`, `config.json`, `metrics.json`) uploaded
last and, when a folder is replaced, deleted first. A reader that checks the marker
sees the old folder, the new one, or none: never a half-written one.

A run dir on a URI is staged in a local mirror (`mirror`) under the toolkit's cache
root; its checkpoints go straight to the URI.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

PathOrUri = Union[str, "os.PathLike[str]"]
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_CHUNK = 16 << 20


def is_uri(path: Any) -> bool:
    """True for `scheme://...` other than `file://` (an epath object-store path keeps its scheme)."""
    if isinstance(path, os.PathLike) and not isinstance(path, Path):
        path = os.fspath(path)
    if not isinstance(path, str):
        return False
    m = _SCHEME.match(path)
    return bool(m) and m.group(1).lower() != "file"


def location(path: PathOrUri) -> Any:
    """The path object for `path`: `epath.Path` for a URI (keeps `gs://` intact, where
    `pathlib` would fold it to `gs:/`), a `pathlib.Path` otherwise."""
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if is_uri(text):
        from etils import epath

        return epath.Path(text)
    return Path(text)


def as_text(path: PathOrUri) -> str:
    """`path` as the user would write it (a URI keeps its `//`)."""
    return os.fspath(path)


def join(base: PathOrUri, *parts: str) -> str:
    """`base/part/...` as text, for a URI or a local path alike."""
    text = as_text(base).rstrip("/")
    return "/".join([text, *(p.strip("/") for p in parts)])


def mirror(uri: PathOrUri, purpose: str = "staging") -> Path:
    """The local folder that stands in for `uri` (under the cache root, one per URI)."""
    from toolkit.paths import cache_root

    scheme, rest = as_text(uri).split("://", 1)
    parts = [p for p in rest.split("/") if p and p not in (".", "..")]
    return cache_root() / purpose / scheme.lower() / Path(*parts)


def has_files(path: PathOrUri) -> bool:
    """Whether `path` (a folder or a URI prefix) holds anything."""
    p = location(path)
    try:
        return p.is_dir() and any(True for _ in p.iterdir())
    except FileNotFoundError:
        return False


def _relative_files(local: Path) -> list[str]:
    return sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())


def _remote_files(uri: PathOrUri) -> list[str]:
    root = location(uri)
    if not root.is_dir():
        return []
    def bare(p: Any) -> str:  # fsspec's walk drops the scheme: compare without it
        return _SCHEME.sub("", as_text(p)).strip("/")

    out = []
    base = bare(root)
    for d, _, files in root.walk():
        prefix = bare(d)[len(base):].strip("/")
        out += [f"{prefix}/{f}" if prefix else f for f in files]
    return sorted(out)


def _copy(src: Any, dst: Any) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


def upload(local: Path, uri: PathOrUri, *, last: Iterable[str] = (), skip: Iterable[str] = ()) -> list[str]:
    """Copy every file under `local` to `uri`, one object per file; the relative names in
    `last` go at the end, in that order (markers). Top-level names in `skip` stay local.
    Returns the names written, in order."""
    skip, last = set(skip), list(last)
    names = [n for n in _relative_files(local) if n.split("/")[0] not in skip]
    order = [n for n in names if n not in last] + [n for n in last if n in names]
    root = location(uri)
    for rel in order:
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)  # nothing to do on an object store
        _copy(Path(local) / rel, dst)
    return order


def download(uri: PathOrUri, local: Path, *, skip: Iterable[str] = ()) -> Path:
    """Copy every object under `uri` into the (new or emptied) folder `local`; top-level
    names in `skip` (e.g. `checkpoints`, which Orbax reads in place) are left out."""
    skip = set(skip)
    local = Path(local)
    if local.exists():
        shutil.rmtree(local)
    local.mkdir(parents=True)
    root = location(uri)
    for rel in _remote_files(uri):
        if rel.split("/")[0] in skip:
            continue
        dst = local / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        _copy(root / rel, dst)
    return local


def local_copy(path: PathOrUri, purpose: str = "remote") -> Path:
    """`path` itself when local; for a URI a fresh local copy of what it holds."""
    if not is_uri(path):
        return Path(path)
    return download(path, mirror(path, purpose))


def publish(local: Path, uri: PathOrUri, *, markers: Iterable[str]) -> None:
    """Make `uri` hold exactly what `local` holds, readers going by `markers`: old markers
    are deleted first (the old folder stops counting as complete), the files are
    uploaded, objects the new folder lacks are deleted, and the markers come last."""
    markers = list(markers)
    root = location(uri)
    old = set(_remote_files(uri))
    for m in markers:
        if m in old:
            (root / m).unlink(missing_ok=True)
    new = set(upload(local, uri, last=markers))
    for rel in sorted(old - new):
        (root / rel).unlink(missing_ok=True)


@contextlib.contextmanager
def writing_dir(target: PathOrUri, *, markers: Iterable[str]) -> Iterator[Path]:
    """Yield an empty local folder whose content becomes `target` on a clean exit.

    Local: `toolkit.io_utils.atomic_dir` (a rename). URI: `publish`, markers last. On an
    exception nothing is written to `target`."""
    if not is_uri(target):
        from toolkit.io_utils import atomic_dir

        with atomic_dir(target) as tmp:
            yield tmp
        return
    with tempfile.TemporaryDirectory(prefix="agile-publish-") as tmp:
        yield Path(tmp)
        publish(Path(tmp), target, markers=markers)


def barrier(name: str) -> None:
    """Wait until every process of a multi-host job gets here (nothing to wait for alone):
    e.g. process 0 prepares a directory before the other hosts open it."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
