"""One writer per directory: a lock file beside the run (or sweep, or export) dir.

Two commands writing one run dir destroy each other (the second deletes the
first's checkpoints, the first dies in Orbax). The lock is `.<name>.lock` in the
target's parent, not inside the target, so taking it never creates or changes the
directory it guards (a refused or failed run leaves that directory as it was).

It is an advisory `flock` on that file, which the kernel drops when its holder
dies, so a SIGKILLed run never blocks the next one; the file also records the
holder's pid, host and command so that the refusal can name them. A lock file
left by a dead pid on this host (one whose `flock` is free) is taken over with a
message. A record naming another host whose lock is free is refused too: its
liveness cannot be checked from here, and shared filesystems do not all carry
`flock` between hosts. On a multi-host job only process 0 takes the lock, since
only it writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable


class LockError(RuntimeError):
    """Another process holds the directory; the message names it and what to do instead."""


def lock_path(target: str | os.PathLike[str]) -> Path:
    """Where the lock of `target` lives: a hidden file beside it."""
    t = Path(target).absolute()
    return t.with_name(f".{t.name}.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _holder(record: dict[str, Any]) -> str:
    if not record:
        return "another process (its lock file has no record yet)"
    return (f"pid {record.get('pid')} on host {record.get('host')!r} (since {record.get('started', '?')}; "
            f"command: {record.get('command', '?')})")


class DirLock:
    """`with DirLock(target, what="run", instead="..."):` holds `target` for this process.

    `what` names the thing in messages; `instead` is the advice for the refused
    writer (e.g. "choose another name=, or wait for it to finish"). `note` receives
    the one-line takeover message of a stale lock (default: stderr).
    """

    def __init__(self, target: str | os.PathLike[str], *, what: str = "directory", instead: str = "",
                 note: Callable[[str], None] | None = None):
        self.target = Path(target)
        self.path = lock_path(target)
        self.what = what
        self.instead = instead
        self.note = note or (lambda msg: print(msg, file=sys.stderr))
        self._fd: int | None = None
        self._made_parent: Path | None = None

    def _refuse(self, record: dict[str, Any], why: str) -> LockError:
        advice = f" {self.instead}" if self.instead else ""
        return LockError(f"{self.what} {self.target} is in use by {_holder(record)}: {why}.{advice} "
                         f"(lock file {self.path})")

    def acquire(self) -> "DirLock":
        parent = self.path.parent
        if not parent.exists():  # remembered so that release() leaves no empty output_dir behind
            missing = parent
            while not missing.parent.exists():
                missing = missing.parent
            parent.mkdir(parents=True, exist_ok=True)
            self._made_parent = missing
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._drop_parent()
                raise self._refuse(_read_record(self.path), "another writer holds its lock") from None
            # The holder may have unlinked the file between our open and our flock: then this
            # lock guards a file nobody else will see, so start again on the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = _read_record(self.path)
        me = socket.gethostname()
        if record and record.get("pid") != os.getpid():
            pid, host = record.get("pid"), record.get("host")
            if host == me:  # its flock is free: that pid is dead (or reused by an unrelated process)
                state = "no longer running" if not isinstance(pid, int) or not _pid_alive(pid) else "no longer holding it"
                self.note(f"note: taking over the stale lock of {self.target} left by pid {pid} on {host}, "
                          f"which is {state}")
            else:
                os.close(fd)
                self._drop_parent()
                raise self._refuse(record, f"the lock was taken on another host, whose process cannot be checked "
                                           f"from {me!r}; if that run is gone, delete the lock file")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": me, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(sys.argv)[:300]}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: no one can slip in between
        finally:
            os.close(self._fd)
            self._fd = None
        self._drop_parent()

    def _drop_parent(self) -> None:
        """Remove the output dir this lock created, when nothing else was put there."""
        if self._made_parent is None:
            return
        p = self.path.parent
        while True:
            try:
                p.rmdir()
            except OSError:
                break
            if p == self._made_parent:
                break
            p = p.parent
        self._made_parent = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
