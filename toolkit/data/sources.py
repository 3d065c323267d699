"""Labelled text rows from files, DataFrames, TFDS and the built-in ETHOS set.

Every source ends in the same two-column frame (`text`: str, `label`: the
original label values) and goes through one validator, so a bad row is
reported the same way whatever it came from: the source, the column, the row
(1-based data rows, as a spreadsheet shows them, plus the file line where there
is one), the value, and what to do about it. A few-shot classifier trains on a
few hundred rows; one empty text or mistyped label is a real share of them, so
problems stop the run instead of being skipped silently.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import difflib
import functools
import http.client
import io
import json
import math
import os
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "DataError",
    "ETHOS_CATEGORIES",
    "check_labels",
    "ethos_split",
    "from_dataframe",
    "load_ethos",
    "load_tfds",
    "read_table",
    "take_subset",
]


class DataError(ValueError):
    """A problem with the data itself (not a bug): the message says where and how to fix it."""


# --------------------------------------------------------------------------- constants

ETHOS_FILES = {"binary": "Ethos_Dataset_Binary.csv", "multilabel": "Ethos_Dataset_Multi_Label.csv"}
_ETHOS_BASE_URL = (
    "https://raw.githubusercontent.com/intelligence-csd-auth-gr/Ethos-Hate-Speech-Dataset/master/ethos/ethos_data/"
)
# Module-level and read at call time, so tests (and mirrors) can point a download elsewhere.
ETHOS_URLS = {variant: _ETHOS_BASE_URL + name for variant, name in ETHOS_FILES.items()}
ETHOS_CATEGORIES = (
    "violence",
    "directed_vs_generalized",
    "gender",
    "race",
    "national_origin",
    "disability",
    "religion",
    "sexual_orientation",
)
# ETHOS category scores are the share of annotators who ticked the category.
# >= 0.5 is "at least half of them": a tie counts as present, the same rule the
# ETHOS README uses for its "433 hateful" count (isHate >= 0.5).
ETHOS_MULTILABEL_THRESHOLD = 0.5
# The codelab's split: df.sample(frac=1, random_state=32); first 800 train.
CODELAB_SEED = 32
CODELAB_TRAIN_SIZE = 800
DOWNLOAD_TIMEOUT_S = 15.0

_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",  # JSON lines, or one JSON array of objects
    ".parquet": "parquet",
    ".pq": "parquet",
}
_DEFAULT_DELIMITER = {"csv": ",", "tsv": "\t"}
_CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
_MAX_LISTED_ROWS = 5


# --------------------------------------------------------------------------- the table every source produces

Locate = Callable[[int], str]  # 0-based position -> "row 17 (line 18 of the file)"


@dataclasses.dataclass(frozen=True)
class _Table:
    """Raw rows plus what an error message needs to point a person at one of them."""

    frame: pd.DataFrame
    source: str
    locate: Locate
    hint: str = ""  # appended to "column not found" errors (e.g. delimiter advice)


def _plain_rows(pos: int) -> str:
    return f"row {pos + 1}"


def _frame_rows(frame: pd.DataFrame) -> Locate:
    """Rows of a DataFrame: 1-based position, plus the index label when it is not the position."""
    default = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1
    if default:
        return _plain_rows
    return lambda pos: f"row {pos + 1} (index {frame.index[pos]!r})"


# --------------------------------------------------------------------------- validation (one path for all sources)


def _validate(table: _Table, text_column: str, label_column: str) -> pd.DataFrame:
    """The shared gate: columns exist once, rows exist, every text and label is usable."""
    _refuse_duplicates(table, [str(c) for c in table.frame.columns])
    _require_columns(table, [text_column, label_column])
    _require_rows(table)
    text = _checked_text(table, text_column)
    label = _checked_labels(table, label_column)
    return pd.DataFrame({"text": pd.Series(text, index=table.frame.index, dtype="str"), "label": label})


def _refuse_duplicates(table: _Table, names: Sequence[str]) -> None:
    """Two columns of one name: which one is "the" text column is a guess, so it is an error."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{table.source}: duplicate column name(s) {dup} in the header {list(names)}; "
                        "rename or drop the extra column(s) so that each name appears once.")


def _require_columns(table: _Table, columns: Sequence[str]) -> None:
    found = [str(c) for c in table.frame.columns]
    for column in columns:
        if column in table.frame.columns:
            continue
        close = difflib.get_close_matches(column, found, n=1)
        maybe = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"{table.source}: column {column!r} not found; columns found: {found}.{maybe} "
            "Name the right columns with text_column=/label_column= (config keys data.text_column / "
            f"data.label_column).{table.hint}"
        )


def _require_rows(table: _Table) -> None:
    if len(table.frame) == 0:
        raise DataError(f"{table.source}: empty dataset (a header but no data rows); add labelled rows.")


def _raise_row_problems(table: _Table, column: str, problems: list[tuple[int, str]], fix: str) -> None:
    """One message for all bad rows of a column: the first in full, the rest by row number."""
    if not problems:
        return
    pos, what = problems[0]
    more = ""
    if len(problems) > 1:
        others = ", ".join(str(p + 1) for p, _ in problems[1:_MAX_LISTED_ROWS + 1])
        tail = ", ..." if len(problems) > _MAX_LISTED_ROWS + 1 else ""
        more = f" Also {len(problems) - 1} more row(s) with problems in this column: {others}{tail}."
    raise DataError(f"{table.source}: {table.locate(pos)}, column {column!r}: {what}. {fix}{more}")


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _text_or_problem(value: Any) -> tuple[str | None, str | None]:
    """(usable text, None) or (None, what is wrong with it)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = value[e.start:e.start + 4]
            return None, f"text is not valid UTF-8 at byte offset {e.start} of the value ({bad!r}; {e.reason})"
    if _is_missing(value):
        return None, "text is missing (empty cell / NaN / None)"
    if not isinstance(value, str):
        return None, f"text must be a string, got {type(value).__name__} {value!r}"
    if not value.strip():
        return None, f"text is empty or whitespace-only ({value!r})"
    return value, None


def _checked_text(table: _Table, column: str) -> list[str]:
    texts, problems = [], []
    for pos, value in enumerate(table.frame[column].tolist()):
        text, problem = _text_or_problem(value)
        texts.append(text)
        if problem:
            problems.append((pos, problem))
    _raise_row_problems(table, column, problems, "Fill in the text or drop the row.")
    return texts


def _label_or_problem(value: Any) -> tuple[Hashable, str | None]:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if _is_missing(value):
        return None, "label is missing (empty cell / NaN / None)"
    if isinstance(value, str) and not value.strip():
        return None, f"label is empty or whitespace-only ({value!r})"
    if not isinstance(value, Hashable):
        return None, f"label must be a single value (str/int), got {type(value).__name__} {value!r}"
    return value, None


def _checked_labels(table: _Table, column: str) -> pd.Series:
    values = table.frame[column]
    problems = [(pos, p) for pos, v in enumerate(values.tolist()) if (p := _label_or_problem(v)[1])]
    _raise_row_problems(table, column, problems, "Every row needs a label: fill it in or drop the row.")
    if values.dtype == object and any(isinstance(v, bytes) for v in values):
        values = values.map(lambda v: _label_or_problem(v)[0])
    return values.rename("label")


def _numeric_column(table: _Table, column: str) -> pd.Series:
    """A score column (ETHOS `isHate`, category shares) as floats, naming any row that is not a number."""
    values = pd.to_numeric(table.frame[column], errors="coerce")
    raw = table.frame[column].tolist()
    problems = [(pos, f"expected a number, got {raw[pos]!r}") for pos in range(len(raw)) if pd.isna(values.iloc[pos])]
    _raise_row_problems(table, column, problems, "This column holds annotator scores in [0, 1].")
    return values.astype(float)


# --------------------------------------------------------------------------- label checks the classifier calls


def check_labels(df: pd.DataFrame, labels: Iterable[Hashable], *, source: str, require_all: bool = True) -> None:
    """Fail before training, not after: an unknown label would be silently unlearnable,
    and a class without examples makes the classifier (and its F1/ROC-AUC) meaningless."""
    allowed = list(labels)
    if not allowed:
        raise DataError(f"{source}: no allowed labels given; pass the class names, e.g. ('no', 'yes').")
    table = _Table(df, source, _frame_rows(df))
    allowed_set = set(allowed)
    problems = [(pos, _unknown_label(v, allowed)) for pos, v in enumerate(df["label"].tolist()) if v not in allowed_set]
    _raise_row_problems(table, "label", problems, "Fix the value, or add it to the classifier's labels.")
    if require_all:
        counts = Counter(df["label"].tolist())
        per_class = {c: counts.get(c, 0) for c in allowed}
        empty = [c for c, n in per_class.items() if n == 0]
        if empty:
            raise DataError(
                f"{source}: class {empty[0]!r} has no examples (examples per class: {per_class}); "
                "every class needs at least one labelled row to learn from. Add examples or remove the class."
            )


def _unknown_label(value: Hashable, allowed: list[Hashable]) -> str:
    msg = f"label {value!r} is not one of the allowed labels {allowed}"
    if str(value) in {str(a) for a in allowed}:
        msg += (f" (it is a {type(value).__name__}, the labels are {type(allowed[0]).__name__}: "
                "convert the column, e.g. df['label'].astype(str))")
    elif not any(type(value) is type(a) for a in allowed):
        msg += " (map raw label values to class names first, e.g. with config key data.label_names)"
    return msg


# --------------------------------------------------------------------------- files


def read_table(
    path: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    *,
    format: str | None = None,
    delimiter: str | None = None,
) -> pd.DataFrame:
    """Read a CSV / TSV / JSONL / Parquet file into validated `text`, `label` columns.

    Bytes are decoded here as strict UTF-8 rather than by pandas, so a stray
    Latin-1 byte is reported at its row and offset instead of turning into
    mojibake that the model then trains on. Data rows are numbered from 1 (the
    header is not a row); messages also give the file line where one exists.
    """
    table = _read_file(Path(path), format=format, delimiter=delimiter, str_columns=(text_column,),
                       expected=(text_column, label_column))
    return _validate(table, text_column, label_column)


def read_multilabel_table(
    path: str | os.PathLike[str],
    text_column: str = "text",
    *,
    label_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    label_delimiter: str | None = None,
    categories: Sequence[str] | None = None,
    format: str | None = None,
    delimiter: str | None = None,
) -> pd.DataFrame:
    """A multi-label file as `text` plus one 0/1 column per category.

    Either `label_columns` (one 0/1 column per category, named by it) or one
    `label_column` whose cells list a row's categories split by `label_delimiter`
    ("race|gender"; an empty cell is a row with none). Categories then are
    `categories` when given (a listed one outside them is an error naming its row),
    else every one that occurs, sorted."""
    if (label_columns is None) == (label_column is None or label_delimiter is None):
        raise DataError(f"{path}: give either label_columns (one 0/1 column per category) or label_column with "
                        "label_delimiter (config keys data.label_columns / data.label_column + data.label_delimiter)")
    wanted = (text_column, *(label_columns or [label_column]))
    table = _read_file(Path(path), format=format, delimiter=delimiter, str_columns=(text_column,) + (
        () if label_columns else (label_column,)), expected=wanted)
    return _multilabel_frame(table, text_column, label_columns=label_columns, label_column=label_column,
                            label_delimiter=label_delimiter, categories=categories)


def _multilabel_frame(table: _Table, text_column: str, *, label_columns: Sequence[str] | None = None,
                      label_column: str | None = None, label_delimiter: str | None = None,
                      categories: Sequence[str] | None = None) -> pd.DataFrame:
    _refuse_duplicates(table, [str(c) for c in table.frame.columns])
    _require_columns(table, [text_column, *(label_columns or [label_column])])
    _require_rows(table)
    text = pd.Series(_checked_text(table, text_column), index=table.frame.index, dtype="str")
    out = pd.DataFrame({"text": text})
    if label_columns:
        for column in label_columns:
            values = pd.to_numeric(table.frame[column], errors="coerce")
            raw = table.frame[column].tolist()
            problems = [(pos, f"expected 0 or 1, got {raw[pos]!r}") for pos in range(len(raw))
                        if values.iloc[pos] not in (0, 1)]
            _raise_row_problems(table, column, problems, "Each category column holds 0 (no) or 1 (yes).")
            out[str(column)] = values.astype(int).to_numpy()
        return out
    cells = [[] if _is_missing(v) else [c.strip() for c in str(v).split(label_delimiter) if c.strip()]
             for v in table.frame[label_column].tolist()]
    names = list(categories) if categories else sorted({c for row in cells for c in row})
    if not names:
        raise DataError(f"{table.source}: column {label_column!r} lists no category in any row "
                        f"(split by {label_delimiter!r}); check data.label_delimiter")
    known = set(names)
    problems = [(pos, f"category {next(c for c in row if c not in known)!r} is not one of {names}")
                for pos, row in enumerate(cells) if any(c not in known for c in row)]
    _raise_row_problems(table, label_column, problems, "Add it to classifier.categories or fix the cell.")
    for name in names:
        out[name] = [int(name in row) for row in cells]
    return out


def from_dataframe(
    df: pd.DataFrame, text_column: str = "text", label_column: str = "label", *, source: str = "DataFrame"
) -> pd.DataFrame:
    """Validate an in-memory frame the same way as a file; the caller's frame is not modified."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    return _validate(_Table(df, source, _frame_rows(df)), text_column, label_column)


def _file_format(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = format.lower().lstrip(".")
        fmt = {"ndjson": "jsonl", "pq": "parquet", "tab": "tsv"}.get(fmt, fmt)
        if fmt not in set(_FORMATS.values()):
            raise DataError(f"{path}: unknown format {format!r}; use one of csv, tsv, jsonl, json, parquet.")
        return fmt
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass format= "
            f"(one of csv, tsv, jsonl, parquet) or rename the file to one of {sorted(_FORMATS)}."
        )
    return fmt


def _read_file(
    path: Path, *, format: str | None, delimiter: str | None, str_columns: Sequence[str], expected: Sequence[str]
) -> _Table:
    if not path.is_file():
        where = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"data file {str(path)!r} {where} (resolved to {path.resolve()}); check the path.")
    fmt = _file_format(path, format)
    if delimiter is not None and fmt not in _DEFAULT_DELIMITER:
        raise DataError(f"{path}: delimiter={delimiter!r} only applies to csv/tsv files, not {fmt}.")
    if fmt == "parquet":
        return _read_parquet(path)
    data = path.read_bytes()
    if fmt in ("jsonl", "json"):
        return _read_jsonl(path, _decode_utf8(path, data, _jsonl_row_starts), allow_array=fmt == "json")
    sep = delimiter or _DEFAULT_DELIMITER[fmt]
    text = _decode_utf8(path, data, functools.partial(_csv_row_starts, delimiter=sep))
    return _read_delimited(path, text, sep, str_columns, expected)


def _decode_utf8(path: Path, data: bytes, row_starts: Callable[[str], list[int]]) -> str:
    """Strict UTF-8 (BOM allowed); the error names the byte offset, line and data row."""
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start
        line = data.count(b"\n", 0, offset) + 1
        # The prefix before the bad byte is valid; a sentinel makes the partial row count.
        rows = row_starts(data[skip:offset].decode("utf-8") + "x")
        where = f"row {len(rows)}, line {line} of the file" if rows else f"line {line} of the file, the header"
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {offset} ({where}): {data[offset:offset + 4]!r} "
            f"({e.reason}). Re-save the file as UTF-8 (e.g. `iconv -f cp1252 -t utf-8 in.csv > out.csv`, or "
            "pandas `df.to_csv(path, encoding='utf-8')`); encodings are not guessed."
        ) from None


def file_row(file: str, pos: int, delimiter: str | None = None) -> str:
    """"row N" of a data file's 0-based data row `pos` (frames keep it as their index
    through shuffles and splits), with the file line when a quoted field spans lines."""
    path = Path(file)
    if path.suffix.lower() in (".csv", ".tsv", ".tab") and path.is_file():
        sep = delimiter or ("," if path.suffix.lower() == ".csv" else "\t")
        try:
            lines = _csv_row_starts(path.read_text(encoding="utf-8-sig"), sep)
        except (OSError, UnicodeDecodeError):
            lines = []
        if pos < len(lines) and lines[pos] != pos + 2:
            return f"row {pos + 1} (line {lines[pos]} of the file)"
    return f"row {pos + 1}"


def _csv_row_starts(text: str, delimiter: str) -> list[int]:
    """1-based file line on which each data row starts (quoted fields may span lines)."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    starts, next_line = [], 1
    try:
        for record in reader:
            if record:  # pandas skips blank lines, so they are not rows
                starts.append(next_line)
            next_line = reader.line_num + 1
    except csv.Error:
        pass  # a malformed tail: the rows before it are still numbered right
    return starts[1:]  # the first record is the header


def _jsonl_row_starts(text: str) -> list[int]:
    return [n for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def _line_locator(rows: Callable[[], list[int]]) -> Locate:
    starts = functools.cache(rows)  # only computed when an error needs it

    def locate(pos: int) -> str:
        lines = starts()
        if pos < len(lines):
            return f"row {pos + 1} (line {lines[pos]} of the file)"
        return f"row {pos + 1} (data rows counted from 1 after the header)"

    return locate


def _read_delimited(path: Path, text: str, sep: str, str_columns: Sequence[str], expected: Sequence[str]) -> _Table:
    if not text.strip():
        raise DataError(f"{path}: the file is empty (no header, no rows); it needs a header line and data rows.")
    header = text.split("\n", 1)[0]
    hint = _delimiter_hint(header, sep, expected)
    try:
        # Only empty cells are missing: "NA", "null" or "None" are real words in comments.
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype={c: str for c in str_columns},
                            keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, csv.Error) as e:
        reason = str(e).strip()
        raise DataError(f"{path}: could not parse as delimited text with delimiter {sep!r}: {reason}.{hint}") from None
    locate = _line_locator(lambda: _csv_row_starts(text, sep))
    table = _Table(frame, str(path), locate, hint)
    # pandas renames a repeated header name ("text", "text.1"): read the header itself.
    _refuse_duplicates(table, [n.strip() for n in next(csv.reader(io.StringIO(text), delimiter=sep), [])])
    return table


def _delimiter_hint(header: str, used: str, expected: Sequence[str]) -> str:
    """When the header splits better on another delimiter, say which one to pass."""
    best = None
    for sep in _CANDIDATE_DELIMITERS:
        if sep == used or sep not in header:
            continue
        names = [n.strip().strip('"') for n in header.split(sep)]
        score = (len(set(expected) & set(names)), len(names))
        if best is None or score > best[0]:
            best = (score, sep, names)
    if best is None:
        return ""
    _, sep, names = best
    return (f" The header line contains {sep!r} and splits on it into {names}: this looks like a "
            f"{sep!r}-separated file, so pass delimiter={sep!r} (config key data.delimiter).")


def _read_jsonl(path: Path, text: str, *, allow_array: bool) -> _Table:
    """One JSON object per line (or, for a .json file, one JSON array of objects)."""
    if allow_array and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
        lines = None
    else:
        records, lines = [], []
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}: line {n} is not valid JSON ({e.msg} at column {e.colno}); each line must be one "
                    'object such as {"text": "...", "label": "..."}.'
                ) from None
            lines.append(n)
    for pos, record in enumerate(records):
        if not isinstance(record, dict):
            where = f"line {lines[pos]}" if lines else f"item {pos + 1}"
            raise DataError(f"{path}: {where} is a JSON {type(record).__name__}, expected an object "
                            '{"text": ..., "label": ...}.')
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    if not records:
        raise DataError(f"{path}: empty dataset (no JSON records); add one object per line.")
    locate = _line_locator(lambda: lines) if lines else _plain_rows
    return _Table(frame, str(path), locate)


def _read_parquet(path: Path) -> _Table:
    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}).") from None
    return _Table(frame, str(path), _plain_rows)


# --------------------------------------------------------------------------- TFDS


def load_tfds(
    name: str,
    split: str = "train",
    text_key: str | None = None,
    label_key: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    label_names: bool = True,
    download: bool = True,
) -> pd.DataFrame:
    """Rows of a TFDS dataset as validated `text`, `label` columns.

    Keys default to the dataset's supervised keys (else its only Text and only
    ClassLabel feature). Integer labels become the ClassLabel names when
    `label_names`, so prompts see words rather than ids. `download=False` fails
    at once on an unprepared dataset: on an offline machine TFDS would otherwise
    retry the download for minutes before giving up.
    """
    from toolkit.quiet import import_quietly

    tfds = import_quietly("tensorflow_datasets")

    source = f"tfds:{name} split {split!r}"
    builder = _tfds_builder(tfds, name, data_dir)
    if not builder.is_prepared():
        _tfds_prepare(builder, name, download)
    tkey, lkey = _tfds_keys(builder.info, text_key, label_key, source)
    texts, labels = _tfds_columns(tfds, builder, split, tkey, lkey, source)
    feature = builder.info.features[lkey]
    if label_names and isinstance(feature, tfds.features.ClassLabel):
        names = feature.names
        labels = [names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in labels]
    frame = pd.DataFrame({"text": texts, "label": labels})
    locate = lambda pos: f"example {pos + 1} (TFDS read order, counted from 1)"  # noqa: E731
    return _validate(_Table(frame, f"{source} (text key {tkey!r}, label key {lkey!r})", locate), "text", "label")


def _offline_advice(name: str) -> str:
    return (f"If this machine is offline, prepare it where there is internet (`tfds build {name} --data_dir DIR`, "
            f"or `tfds.builder({name!r}, data_dir=DIR).download_and_prepare()`), copy DIR here and pass "
            "data_dir=DIR (config key data.local_dir).")


def _tfds_builder(tfds: Any, name: str, data_dir: str | os.PathLike[str] | None) -> Any:
    try:
        return tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        # TFDS's own message lists the whole catalog; a name and a next step are more useful.
        raise DataError(
            f"TFDS has no dataset named {name!r}, and no prepared copy was found under "
            f"data_dir={None if data_dir is None else os.fspath(data_dir)!r}. Check the name "
            "(https://www.tensorflow.org/datasets/catalog) or pass the data_dir holding a prepared copy."
        ) from None


def _tfds_prepare(builder: Any, name: str, download: bool) -> None:
    if not download:
        raise DataError(f"TFDS dataset {name!r} is not prepared under {builder.data_dir} and download=False. "
                        + _offline_advice(name))
    try:
        builder.download_and_prepare()
    except Exception as e:  # network, checksum and manual-download errors all end here
        reason = f"{type(e).__name__}: {e}"[:400]
        raise DataError(f"TFDS dataset {name!r} is not prepared under {builder.data_dir} and preparing it "
                        f"failed ({reason}). " + _offline_advice(name)) from e


def _tfds_keys(info: Any, text_key: str | None, label_key: str | None, source: str) -> tuple[str, str]:
    from toolkit.quiet import import_quietly

    tfds = import_quietly("tensorflow_datasets")

    features = info.features
    supervised = info.supervised_keys if isinstance(info.supervised_keys, tuple) else None
    if supervised and len(supervised) == 2 and all(isinstance(k, str) for k in supervised):
        text_key = text_key or supervised[0]
        label_key = label_key or supervised[1]
    text_key = text_key or _only_feature(features, tfds.features.Text, "text_key", source)
    label_key = label_key or _only_feature(features, tfds.features.ClassLabel, "label_key", source)
    for key, arg in ((text_key, "text_key"), (label_key, "label_key")):
        if key not in features:
            raise DataError(f"{source}: feature {key!r} ({arg}) not found; features: {sorted(features.keys())}.")
    return text_key, label_key


def _only_feature(features: Any, kind: type, arg: str, source: str) -> str:
    found = [k for k, f in features.items() if isinstance(f, kind)]
    if len(found) != 1:
        raise DataError(f"{source}: cannot choose {arg}: {len(found)} {kind.__name__} features {found} among "
                        f"{sorted(features.keys())}; pass {arg}=.")
    return found[0]


def _tfds_columns(tfds: Any, builder: Any, split: str, tkey: str, lkey: str, source: str) -> tuple[list, list]:
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except (ValueError, KeyError) as e:
        splits = sorted(builder.info.splits)
        raise DataError(f"{source}: cannot read split {split!r} ({e}); splits: {splits}.") from None
    ds = ds.map(lambda ex: (ex[tkey], ex[lkey])).batch(1024)
    texts: list[Any] = []
    labels: list[Any] = []
    for t, y in tfds.as_numpy(ds):
        texts.extend(t.tolist())
        labels.extend(y.tolist())
    return texts, labels


# --------------------------------------------------------------------------- ETHOS


def load_ethos(
    variant: str = "binary",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """The ETHOS hate-speech set the codelab trains on (Mollas et al. 2022, GPL-3.0).

    binary: `text`, `label` with label = isHate >= median(isHate) as 0/1 — the
    codelab's rule; the median (1/3) is lower than 0.5, which makes the classes
    balanced (515 of 998 positive). multilabel: `text` plus one 0/1 column per
    ETHOS category, set when at least half of the annotators ticked it
    (`ETHOS_MULTILABEL_THRESHOLD`).

    `local_dir` (or a file already in the cache) never touches the network.
    """
    if variant not in ETHOS_FILES:
        raise DataError(f"unknown ETHOS variant {variant!r}; use one of {sorted(ETHOS_FILES)}.")
    path = _ethos_file(variant, cache_dir, local_dir)
    table = _read_file(path, format="csv", delimiter=";", str_columns=("comment",),
                       expected=("comment", "isHate") if variant == "binary" else ("comment", *ETHOS_CATEGORIES))
    if variant == "binary":
        rows = _validate(table, "comment", "isHate")
        scores = _numeric_column(table, "isHate")
        return rows.assign(label=(scores >= scores.median()).astype(int))
    _require_columns(table, ["comment", *ETHOS_CATEGORIES])
    _require_rows(table)
    out = pd.DataFrame({"text": pd.Series(_checked_text(table, "comment"), index=table.frame.index, dtype="str")})
    for category in ETHOS_CATEGORIES:
        out[category] = (_numeric_column(table, category) >= ETHOS_MULTILABEL_THRESHOLD).astype(int)
    return out


def ethos_multilabel_split(*, cache_dir: str | os.PathLike[str] | None = None,
                           local_dir: str | os.PathLike[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ETHOS's categories on the codelab's split: the binary file's 998 rows shuffled and cut
    exactly as `ethos_split` does (800 train, 198 test), each row's categories taken from
    the multi-label file (which annotates the 433 rows with isHate >= 0.5; every other
    row has none). So a category model trains and tests on the same rows, in the same
    order, as the codelab's hate/not-hate one, and learns from non-hateful text too."""
    binary = load_ethos("binary", cache_dir=cache_dir, local_dir=local_dir)
    multi = load_ethos("multilabel", cache_dir=cache_dir, local_dir=local_dir)

    def key(texts: pd.Series) -> pd.Series:  # the files differ in spaces (23 rows: U+00A0 vs " ")
        return texts.map(lambda t: " ".join(t.split()))

    by_text = multi.assign(text=key(multi["text"])).drop_duplicates("text").set_index("text")[list(ETHOS_CATEGORIES)]
    binary_keys = key(binary["text"])
    missing = sorted(set(by_text.index) - set(binary_keys))
    if missing:
        raise DataError(f"ETHOS multilabel: {len(missing)} comment(s) of {ETHOS_FILES['multilabel']} are not in "
                        f"{ETHOS_FILES['binary']} (first: {missing[0][:60]!r}); the two files are from different "
                        "releases: fetch both again")
    cats = by_text.reindex(binary_keys).fillna(0).astype(int).set_axis(binary.index)
    train, test = ethos_split(pd.concat([binary[["text"]], cats], axis=1))
    return train, test


DATA_ENV = "AGILE_TOOLKIT_DATA"


def default_cache_dir() -> Path:
    """Where downloads go: the cache root's datasets/."""
    from toolkit.paths import cache_root

    return cache_root() / "datasets"


def data_root_dir(source: str) -> Path | None:
    """`$AGILE_TOOLKIT_DATA/<source>`: an offline copy of a built-in source's files, or None.

    A machine-wide place for data that configs need not name: shipped configs then work
    on any machine (a laptop's copy, a pod's shared mount, a Ray job's
    `--runtime-env-json '{"env_vars": {"AGILE_TOOLKIT_DATA": ...}}'`)."""
    root = os.environ.get(DATA_ENV)
    return Path(root).expanduser() / source if root else None


def _ethos_file(variant: str, cache_dir: str | os.PathLike[str] | None,
                local_dir: str | os.PathLike[str] | None) -> Path:
    """data.local_dir, else $AGILE_TOOLKIT_DATA/ethos, else the cache, else a download."""
    name, url = ETHOS_FILES[variant], ETHOS_URLS[variant]
    if local_dir is not None:
        folder = Path(local_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"ETHOS {variant}: data.local_dir {os.fspath(local_dir)!r} is not a directory; point it "
                            f"at the folder holding {name}, or leave it unset to read ${DATA_ENV}/ethos, the cache, "
                            "or download.")
        path = folder / name
        if not path.is_file():
            raise DataError(f"ETHOS {variant}: {path} not found (local_dir={os.fspath(local_dir)!r}); put {name} "
                            f"there (download it from {url}) or fix local_dir.")
        return path
    offline = data_root_dir("ethos")
    if offline is not None and (offline / name).is_file():
        return offline / name
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache / name
    if not path.is_file():
        _download(url, path, what=f"ETHOS {variant}", source="ethos")
    return path


def _download(url: str, dest: Path, *, what: str, source: str) -> None:
    """Fetch once, atomically: a half-written file must never look like a cached copy."""
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, dest)
        tmp = None
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, timeouts, HTTP and disk errors
        raise DataError(
            f"{what}: could not download {url} into {dest.parent} ({type(e).__name__}: {e}). If this machine is "
            f"offline, fetch {dest.name} elsewhere (e.g. `curl -LO {url}`) and put it in ${DATA_ENV}/{source}/, "
            "or pass local_dir=DIR (config key data.local_dir) for the directory holding it, or put it in the "
            "cache directory (cache_dir=)."
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def ethos_split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The codelab's split, exactly: shuffle with seed 32, first 800 rows train, the rest test.

    The original row index is kept so runs can be compared row by row with the codelab.
    """
    if len(df) <= CODELAB_TRAIN_SIZE:
        raise DataError(f"ethos_split needs more than {CODELAB_TRAIN_SIZE} rows (the codelab's train size), "
                        f"got {len(df)}; it is meant for load_ethos('binary') (998 rows).")
    shuffled = df.sample(frac=1, random_state=CODELAB_SEED)
    return shuffled.iloc[:CODELAB_TRAIN_SIZE], shuffled.iloc[CODELAB_TRAIN_SIZE:]


def take_subset(train_df: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first n rows of the (already shuffled) train part: the codelab's 200/400/800 subsets,
    nested so that a larger subset contains every smaller one."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"subset size must be a positive integer, got {n!r}.")
    if n > len(train_df):
        raise DataError(f"subset size train_size={n} is larger than the training set ({len(train_df)} rows); "
                        f"use at most {len(train_df)} (config key data.train_size).")
    return train_df.iloc[:n]
