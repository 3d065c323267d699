"""The one top-level error handler of every `launch/` command.

A user's mistake (a config value, a data row, a busy run dir, a corrupt saved
file) is one line, `error: ...`, and exit code 2: the message already says
where and what to do, and a traceback would bury it. Anything else is a bug in
the toolkit: its traceback is printed in full, with a line saying so, and the
exit code is 1. Ctrl-C is exit 130 without a traceback.

Known error classes are matched by module and name, and only in modules that are
already imported (an exception cannot be an instance of a class never loaded),
so the sweep driver, which must never import JAX, can use this handler too.
"""

from __future__ import annotations

import sys
import traceback
from typing import Callable, Sequence

from toolkit.quiet import quiet_libraries

# (module, class): the errors whose message is the whole story.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("toolkit.config", "ConfigError"),
    ("toolkit.data.sources", "DataError"),
    ("toolkit.run_lock", "LockError"),
    ("toolkit.run_dir", "RunDirError"),
    ("toolkit.saved_files", "SavedFileError"),
    ("toolkit.train.checkpoint", "CheckpointError"),
    ("toolkit.train.loop", "OutOfMemory"),
    ("toolkit.train.callbacks", "TrainingDiverged"),
    ("toolkit.weights.errors", "WeightImportError"),
    ("toolkit.export.errors", "ExportError"),
    ("toolkit.report.collect", "ReportError"),
    ("toolkit.predict", "PredictError"),
    ("toolkit.suggest", "SuggestError"),
)

USER_ERROR_EXIT = 2
BUG_EXIT = 1


def is_user_error(e: BaseException) -> bool:
    """True when `e` is one of `USER_ERRORS` (a mistake its message explains)."""
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(e, cls):
            return True
    return False


def one_line(e: BaseException) -> str:
    """The message on one line (a nested cause's newlines would split the `error:` line)."""
    return " ".join(str(e).split())


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)` and turn what it raises into a message and an exit code."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place every command's failures end
        if is_user_error(e):
            print(f"error: {one_line(e)}", file=sys.stderr)
            return USER_ERROR_EXIT
        traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: this is a bug in agile-toolkit, not in your input; "
              "please report it with the traceback above", file=sys.stderr)
        return BUG_EXIT


def script(main: Callable[[Sequence[str] | None], int]) -> Callable[[], None]:
    """A console script's entry point (`[project.scripts]`): `main` on the command line's
    arguments under `run`'s handler, its result the exit status; other libraries quiet."""

    def entry() -> None:
        quiet_libraries()
        raise SystemExit(run(main))

    return entry
