"""The safetensors format, read and written with numpy alone.

A file is an 8-byte little-endian header length, a JSON header
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`,
offsets relative to the end of the header) and the raw little-endian bytes.
Reading memory-maps the file and decodes one tensor at a time, so a 7B
checkpoint never sits in memory twice; bfloat16 goes through `ml_dtypes`
(a JAX dependency), so neither torch nor the `safetensors` package is needed.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import Mapping

import ml_dtypes
import numpy as np

from toolkit.weights.errors import WeightImportError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20  # the format's own bound on the JSON header


class SafetensorsFile:
    """One `.safetensors` file, memory-mapped; `tensor(name)` decodes one tensor."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise WeightImportError(f"{self.path}: cannot read ({e})") from None
        size = len(self._buffer)
        if size < 8:
            raise WeightImportError(f"{self.path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", self._buffer[:8])
        if n > min(_MAX_HEADER, size - 8):
            raise WeightImportError(f"{self.path}: not a safetensors file (header length {n} is impossible)")
        try:
            header = json.loads(bytes(self._buffer[8:8 + n]))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightImportError(f"{self.path}: safetensors header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise WeightImportError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._start = 8 + n
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self._entries[name] = self._check(name, entry, size - self._start)

    def _check(self, name: str, entry: object, data_size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
        try:
            dtype = DTYPES[entry["dtype"]]  # type: ignore[index]
            shape = tuple(int(d) for d in entry["shape"])  # type: ignore[index]
            begin, end = (int(o) for o in entry["data_offsets"])  # type: ignore[index]
        except KeyError as e:
            raise WeightImportError(f"{self.path}: tensor {name!r} has unsupported or missing {e}") from None
        except (TypeError, ValueError):
            raise WeightImportError(f"{self.path}: tensor {name!r} has a malformed header entry") from None
        if not 0 <= begin <= end <= data_size or end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise WeightImportError(f"{self.path}: tensor {name!r} has offsets [{begin}, {end}) that do not fit "
                                    f"its shape {shape} and dtype (the file is truncated or damaged)")
        return dtype, shape, begin, end

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def tensor(self, name: str) -> np.ndarray:
        """A read-only view of the tensor's bytes (no copy); callers cast as they need."""
        dtype, shape, begin, end = self._entries[name]
        return np.frombuffer(self._buffer, dtype=dtype, count=int(np.prod(shape)),
                             offset=self._start + begin).reshape(shape)

    def close(self) -> None:
        self._buffer.close()

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray],
          metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (in the given order) as one safetensors file, streaming each tensor's bytes."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, value in tensors.items():
        dtype = np.dtype(value.dtype)
        if dtype not in _NAMES:
            raise ValueError(f"{name}: dtype {dtype} has no safetensors name")
        header[name] = {"dtype": _NAMES[dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for value in tensors.values():
            f.write(np.ascontiguousarray(value).tobytes())  # every platform JAX runs on is little-endian
