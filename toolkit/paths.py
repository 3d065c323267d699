"""The toolkit's one cache root on a machine.

Downloads, assembled GGUFs and compiled XLA programs all live under it, so a user
moves or clears one folder (`$AGILE_TOOLKIT_CACHE`, default
`~/.cache/agile-toolkit`), and a pod points every host at a shared disk with one
variable."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AGILE_TOOLKIT_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "agile-toolkit").expanduser()
