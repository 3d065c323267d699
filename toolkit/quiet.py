"""Other libraries' start-up chatter, kept off the toolkit's output.

On a CPU machine TensorFlow (tf.data, TFDS) prints "Could not find cuda drivers", an
`E0000 ... cuInit` line that reads like a failure, and oneDNN notices; Orbax logs every
checkpoint at INFO in a Ray worker. Those lines are written by C++ before TensorFlow's
own log level is read, so the import itself runs with the process's stderr pointed at
/dev/null. Our progress, results, warnings and errors stay; `AGILE_TOOLKIT_VERBOSE=1`
brings the rest back.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from types import ModuleType
from typing import Iterator

VERBOSE_ENV = "AGILE_TOOLKIT_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def quiet_libraries() -> None:
    """Python-side log levels (absl / Orbax / TensorFlow at WARNING) and TensorFlow's C++
    level for what it logs after start-up; inherited by the processes a command starts."""
    if verbose():
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # not setdefault: importing keras sets it to 1
    for name in ("absl", "orbax", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_quietly(name: str) -> ModuleType:
    """`import name` with its start-up lines dropped (unless verbose); an import error is
    still raised, with its message."""
    if name in sys.modules or verbose():
        return importlib.import_module(name)
    quiet_libraries()
    with _stderr_silenced():
        return importlib.import_module(name)
