"""Reading a saved classifier's files, with errors that name the file.

A truncated `lora.npz` (a copy cut short, a full disk) raised a bare
`BadZipFile`, and a damaged `classifier.json` a bare `JSONDecodeError`, neither
saying which file of which directory was at fault or what to do. Everything
read back from a saved classifier goes through here instead.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_FIX = "the file is damaged or cut short: save the classifier again, or copy it anew from where it was saved"


class SavedFileError(ValueError):
    """A saved classifier's file is missing, damaged or holds values out of range."""


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`."""
    if not path.is_file():
        raise SavedFileError(f"{path}: missing; {path.parent} is not a complete saved classifier")
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SavedFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {_FIX}") from None
    except UnicodeDecodeError as e:
        raise SavedFileError(f"{path}: not UTF-8 text (byte offset {e.start}); {_FIX}") from None
    if not isinstance(out, dict):
        raise SavedFileError(f"{path}: holds a JSON {type(out).__name__}, not an object; {_FIX}")
    return out


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the `.npz` archive `path`, read in full (so a cut-short member fails here)."""
    if not path.is_file():
        raise SavedFileError(f"{path}: missing; {path.parent} is not a complete saved classifier")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise SavedFileError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e}); {_FIX}") from None
