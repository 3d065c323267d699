"""Labelled text rows from files, DataFrames, TFDS and built-in sets, validated.

Every source returns a DataFrame with columns `text` and `label` (original
values) and passes through one validator, so a bad row reads the same
whatever it came from: the message names the source, the column, the row
(1-based data rows, as a spreadsheet shows them) and the value, and says how
to fix it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

ETHOS_URLS = {
    "binary": "https://raw.githubusercontent.com/intelligence-csd-auth-gr/Ethos-Hate-Speech-Dataset/master/"
              "ethos/ethos_data/Ethos_Dataset_Binary.csv",
    "multilabel": "https://raw.githubusercontent.com/intelligence-csd-auth-gr/Ethos-Hate-Speech-Dataset/master/"
                  "ethos/ethos_data/Ethos_Dataset_Multi_Label.csv",
}
ETHOS_CATEGORIES = ("violence", "directed_vs_generalized", "gender", "race", "national_origin", "disability",
                    "religion", "sexual_orientation")
ETHOS_SEED, ETHOS_TRAIN = 32, 800
DOWNLOAD_TIMEOUT_S = 20.0
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class DataError(ValueError):
    """A data problem; the message names the source, column, row and value."""


# --------------------------------------------------------------------------- validation


def _row(i: int) -> str:
    return f"row {i + 1}"


def validate(df: pd.DataFrame, text_column: str, label_column: str, *, source: str,
             line_offset: int | None = None) -> pd.DataFrame:
    """The (text, label) frame, or a DataError for the first problem found."""
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if missing:
        raise DataError(f"{source}: column(s) {missing} not found; columns are {list(map(str, df.columns))}. "
                        f"Pass text_column= / label_column= (config: data.text_column / data.label_column)")
    if len(df) == 0:
        raise DataError(f"{source}: the dataset is empty (no data rows)")
    out = pd.DataFrame({"text": df[text_column].to_numpy(), "label": df[label_column].to_numpy()})
    where = (lambda i: f"{_row(i)} (line {i + 1 + line_offset} of the file)") if line_offset is not None else _row
    for i, t in enumerate(out["text"]):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{source}: {where(i)}, column {text_column!r}: text is empty or whitespace-only "
                            f"({t!r}); remove the row or fill it in")
    for i, v in enumerate(out["label"]):
        if v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()):
            raise DataError(f"{source}: {where(i)}, column {label_column!r}: label is missing ({v!r}); "
                            "every row needs a label")
    return out


def check_labels(df: pd.DataFrame, labels: Sequence[str], *, source: str, require_all: bool = True) -> None:
    """Every label value is a known class, and (for training) every class has examples."""
    allowed = list(labels)
    known = set(allowed)
    for i, v in enumerate(df["label"]):
        if v not in known:
            raise DataError(f"{source}: {_row(i)}: label {v!r} is not in the label set {allowed}; "
                            "fix the row, or add the class to labels")
    if require_all:
        counts = df["label"].value_counts()
        empty = [c for c in allowed if counts.get(c, 0) == 0]
        if empty:
            have = {c: int(counts.get(c, 0)) for c in allowed}
            raise DataError(f"{source}: class(es) {empty} have no examples (examples per class: {have}); "
                            "a classifier cannot learn a class it never sees")


# --------------------------------------------------------------------------- files


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}); "
                        "re-save the file as UTF-8") from None


def read_table(path: str | os.PathLike, text_column: str = "text", label_column: str = "label", *,
               format: str | None = None, delimiter: str | None = None) -> pd.DataFrame:
    """CSV / TSV / JSONL / Parquet into a validated (text, label) frame."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    fmt = format or _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{p}: unknown format {p.suffix!r}; pass format= one of csv, tsv, jsonl, parquet")
    line_offset = None
    if fmt == "parquet":
        try:
            df = pd.read_parquet(p)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{p}: not a readable Parquet file: {e}") from None
    elif fmt == "jsonl":
        rows = []
        for n, line in enumerate(_decode(p).splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}: line {n} is not valid JSON: {e.msg}") from None
        df = pd.DataFrame(rows)
        line_offset = 0
    else:
        sep = delimiter or ("\t" if fmt == "tsv" else ",")
        text = _decode(p)
        try:
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype={text_column: str}, keep_default_na=True)
        except pd.errors.ParserError as e:
            raise DataError(f"{p}: cannot parse as {fmt} with delimiter {sep!r}: {e}") from None
        line_offset = 1
        if text_column not in df.columns or label_column not in df.columns:
            header = text.splitlines()[0] if text else ""
            for other in (";", "\t", ",", "|"):
                if other != sep and other in header and {text_column, label_column} <= set(
                        next(csv.reader([header], delimiter=other))):
                    raise DataError(f"{p}: columns {text_column!r}/{label_column!r} not found with delimiter "
                                    f"{sep!r}, but the header splits on {other!r}; pass delimiter={other!r} "
                                    f"(config: data.delimiter)")
    return validate(df, text_column, label_column, source=str(p), line_offset=line_offset)


def from_dataframe(df: pd.DataFrame, text_column: str = "text", label_column: str = "label", *,
                   source: str = "DataFrame") -> pd.DataFrame:
    return validate(df.reset_index(drop=True), text_column, label_column, source=source)


# --------------------------------------------------------------------------- TFDS


def load_tfds(name: str, split: str = "train", text_key: str | None = None, label_key: str | None = None, *,
              data_dir: str | None = None, label_names: bool = True) -> pd.DataFrame:
    """A TFDS split as (text, label); int labels become the ClassLabel names when known."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as e:
            raise DataError(f"tfds:{name}: not prepared in {builder.data_dir} and could not be downloaded ({e}); "
                            f"prepare it on a machine with network (tfds.builder({name!r}).download_and_prepare()) "
                            "and pass its data_dir (config: data.local_dir)") from None
    features = builder.info.features
    text_key = text_key or next((k for k in ("text", "sentence", "comment", "review") if k in features), None)
    label_key = label_key or ("label" if "label" in features else None)
    if text_key is None or label_key is None:
        raise DataError(f"tfds:{name}: cannot tell the text and label features among {list(features)}; "
                        "pass text_key= and label_key=")
    rows = tfds.as_numpy(builder.as_dataset(split=split))
    texts, labels = [], []
    for ex in rows:
        t = ex[text_key]
        texts.append(t.decode("utf-8") if isinstance(t, bytes) else str(t))
        labels.append(ex[label_key])
    feat = features[label_key]
    if label_names and hasattr(feat, "names"):
        labels = [feat.names[int(v)] for v in labels]
    else:
        labels = [v.item() if hasattr(v, "item") else v for v in labels]
    return validate(pd.DataFrame({"text": texts, "label": labels}), "text", "label", source=f"tfds:{name}[{split}]")


# --------------------------------------------------------------------------- ETHOS


def default_data_dir() -> Path:
    if os.environ.get("AGILE_TOOLKIT_DATA"):
        return Path(os.environ["AGILE_TOOLKIT_DATA"])
    base = Path(os.environ.get("AGILE_TOOLKIT_CACHE", Path.home() / ".cache" / "agile-toolkit"))
    return base / "datasets"


def fetch(url: str, dest: Path) -> Path:
    """Download `url` to `dest` once; a cached file is never fetched again. Atomic."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r, os.fdopen(fd, "wb") as f:
            f.write(r.read())
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"could not download {url} into {dest} ({e}). Offline? Point at a local copy: "
                        "local_dir= (config: data.local_dir), or put the file in the cache dir "
                        "($AGILE_TOOLKIT_DATA)") from None
    return dest


def load_ethos(variant: str = "binary", *, cache_dir: str | os.PathLike | None = None,
               local_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """ETHOS as (text, label) with the codelab's label: hateful = isHate >= median(isHate).

    Multi-label: `text` plus one 0/1 column per category, each binarised at
    >= 0.5 (the share of annotators who marked it, i.e. a majority).
    """
    if variant not in ETHOS_URLS:
        raise DataError(f"ETHOS variant {variant!r} unknown; choose 'binary' or 'multilabel'")
    url = ETHOS_URLS[variant]
    name = url.rsplit("/", 1)[1]
    if local_dir is not None:
        path = Path(local_dir) / name
        if not path.is_file():
            raise DataError(f"{path}: ETHOS file not found in local_dir {local_dir}")
    else:
        dest_dir = Path(cache_dir) if cache_dir else default_data_dir() / "ethos"
        path = fetch(url, dest_dir / name)
    if variant == "binary":
        raw = pd.read_csv(io.StringIO(_decode(path)), sep=";")
        df = validate(raw, "comment", "isHate", source=str(path), line_offset=1)
        df.index = raw.index
        df["label"] = (raw["isHate"] >= raw["isHate"].median()).astype(int)
        return df
    raw = pd.read_csv(io.StringIO(_decode(path)), sep=";")
    missing = [c for c in ("comment", *ETHOS_CATEGORIES) if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: columns {missing} not found; columns are {list(raw.columns)}")
    out = pd.DataFrame({"text": raw["comment"]})
    for c in ETHOS_CATEGORIES:
        out[c] = (raw[c] >= 0.5).astype(int)
    return out


def ethos_split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The codelab's split: shuffle with random_state=32, first 800 train, the rest test."""
    shuffled = df.sample(frac=1, random_state=ETHOS_SEED)
    return shuffled[:ETHOS_TRAIN], shuffled[ETHOS_TRAIN:]


def take_subset(train: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first `n` rows of the (already shuffled) training part, as the codelab's 200/400/800."""
    if n < 1 or n > len(train):
        raise DataError(f"train_size={n} but the training part has {len(train)} rows")
    return train.iloc[:n]
