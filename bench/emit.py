"""How every bench script hands back its result: one JSON object on stdout, and the same
written atomically to `--out` unless that is `-` (a cut-off run leaves no half file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: str | Path, *, indent: int = 2) -> str:
    text = json.dumps(result, indent=indent)
    print(text)
    if str(out) != "-":
        from toolkit.io_utils import write_text

        write_text(Path(out), text + "\n")
    return text
