"""Score a file of texts with a trained classifier: streamed, resumable, atomic.

`predict_file` reads the input in chunks of `chunk_rows` rows (CSV / TSV / JSONL /
Parquet), scores each chunk with the classifier's one compiled scorer (data parallel
over every local device, like `fit`), and writes every input column plus one
probability column per class (`p_<class>`), the predicted class (`predicted`) and,
where the classifier carries a threshold, `above_threshold`. Memory is one chunk,
whatever the file's length.

Nothing appears at `output` until the whole file is scored: each finished chunk is a
part file in a work folder beside it (`.<output name>.parts/`, written atomically),
and the parts are joined into `output` with one rename at the end. `resume=True`
after a kill continues from the last finished part, and the joined file is
byte-identical to an uninterrupted run's (the chunks, their order and their scores
do not depend on where a run stopped).
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from toolkit.data.sources import DataError, _file_format
from toolkit.io_utils import atomic_path

_DELIMITER = {"csv": ",", "tsv": "\t"}


class PredictError(ValueError):
    """The output cannot be written as asked (exists, or an earlier run's parts are in the way)."""

_PART = "part-{:06d}.{}"


@dataclasses.dataclass(frozen=True)
class PredictStats:
    rows: int
    resumed_rows: int
    seconds: float
    rows_per_s: float
    output: str


def _parts_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.parts"


def _chunks(path: Path, fmt: str, text_column: str, chunk_rows: int, delimiter: str | None) -> Iterator[pd.DataFrame]:
    """The input, `chunk_rows` rows at a time, text column checked; errors name file, column, row."""
    if fmt in _DELIMITER:
        _check_utf8(path)
        try:
            reader = pd.read_csv(path, sep=delimiter or _DELIMITER[fmt], chunksize=chunk_rows, dtype=str,
                                 keep_default_na=False, encoding="utf-8")
            yield from _checked(reader, path, text_column)
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: the file is empty; expected a header row with a {text_column!r} column "
                            "and at least one row") from None
        except pd.errors.ParserError as e:
            raise DataError(f"{path}: not a readable {fmt.upper()} file ({' '.join(str(e).split())}); "
                            "check the delimiter and quoting") from None
    elif fmt == "jsonl":
        _check_utf8(path)
        if path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty; expected one JSON object per line with a "
                            f"{text_column!r} key")
        try:
            reader = pd.read_json(path, lines=True, chunksize=chunk_rows, dtype=False, encoding="utf-8")
            yield from _checked(reader, path, text_column)
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON lines ({' '.join(str(e).split())[:200]})") from None
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        if pf.metadata.num_rows == 0:
            raise DataError(f"{path}: the file has no rows")
        yield from _checked((b.to_pandas() for b in pf.iter_batches(batch_size=chunk_rows)), path, text_column)
    else:
        raise DataError(f"{path}: {fmt} input is not supported by predict; use csv, tsv, jsonl or parquet")


def _check_utf8(path: Path) -> None:
    """Strict UTF-8, read in blocks (bounded memory); the error names the byte offset and line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                at = offset + e.start
                line += block[: e.start].count(b"\n")
                raise DataError(f"{path}: byte {at} (line {line}) is not UTF-8 ({block[e.start:e.start + 1]!r}); "
                                "save the file as UTF-8") from None
            offset += len(block)
            line += block.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{path}: the file ends inside a UTF-8 character; save it as UTF-8") from None


def _checked(frames: Any, path: Path, text_column: str) -> Iterator[pd.DataFrame]:
    columns_checked, start = False, 0
    for frame in frames:
        if not columns_checked and text_column not in frame.columns:
            raise DataError(f"{path}: no column {text_column!r} (columns: {list(frame.columns)}); "
                            "pass --text-column with the name of the column that holds the texts")
        columns_checked = True
        if not len(frame):
            continue
        texts = frame[text_column]
        bad = [i for i, v in enumerate(texts.tolist()) if not isinstance(v, str) or not v.strip()]
        if bad:
            raise DataError(f"{path}: row {start + bad[0] + 1}, column {text_column!r}: empty or not text "
                            f"({texts.iloc[bad[0]]!r}); fill it in or drop the row")
        start += len(frame)
        yield frame
    if not start:
        raise DataError(f"{path}: the file has a header but no rows")


def read_texts(path: str | Path, text_column: str = "text", *, delimiter: str | None = None) -> pd.DataFrame:
    """A whole CSV / TSV / JSONL / Parquet file, its text column checked as `predict_file`
    checks it (a pool to suggest from, a file of labelled rows)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    frames = list(_chunks(path, _file_format(path, None), text_column, 1 << 16, delimiter))
    return pd.concat(frames, ignore_index=True)


def predicted_column(clf: Any, probs: np.ndarray) -> Any:
    """The `predicted` column of scored rows: the class (at its threshold), or for multi-label
    every category at or above its threshold, joined by ';'."""
    if hasattr(clf, "category_names"):
        return [";".join(n for n, hit in zip(clf.category_names, row) if hit) for row in clf._decide(probs)]
    return np.asarray(clf.class_names)[clf._decide(probs)]


def _names(clf: Any) -> list[str]:
    return list(getattr(clf, "category_names", None) or clf.class_names)


def _check_no_clash(clf: Any, columns: Any, path: Path) -> None:
    clash = [c for c in [f"p_{n}" for n in _names(clf)] + ["predicted", "above_threshold"] if c in columns]
    if clash:
        raise DataError(f"{path}: column {clash[0]!r} is one that predict writes; rename it in the input")


def _scored(clf: Any, frame: pd.DataFrame, text_column: str) -> pd.DataFrame:
    names = _names(clf)
    probs = clf.predict_proba(frame[text_column].tolist())
    out = frame.copy()
    for j, name in enumerate(names):
        out[f"p_{name}"] = probs[:, j]
    out["predicted"] = predicted_column(clf, probs)
    if not hasattr(clf, "category_names"):
        t = clf.threshold_
        if t is not None:
            out["above_threshold"] = probs[:, clf.class_names.index(t["positive"])] >= t["threshold"]
    return out


def _write_part(frame: pd.DataFrame, path: Path, fmt: str, header: bool, delimiter: str | None) -> None:
    with atomic_path(path) as tmp:
        if fmt in _DELIMITER:
            frame.to_csv(tmp, sep=delimiter or _DELIMITER[fmt], index=False, header=header, lineterminator="\n")
        elif fmt == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)


def _join(parts: list[Path], output: Path, fmt: str) -> None:
    with atomic_path(output) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            writer = None
            try:
                for part in parts:
                    table = pq.read_table(part)
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()
        else:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out)


def _where(classifier: str | Path) -> str:
    from toolkit.storage import is_uri

    return str(classifier) if is_uri(classifier) else str(Path(classifier).resolve())


def predict_file(classifier: Any, input: str | Path, output: str | Path, *, text_column: str = "text",
                 chunk_rows: int = 4096, resume: bool = False, overwrite: bool = False,
                 input_format: str | None = None, delimiter: str | None = None, progress: bool = True) -> PredictStats:
    """Score every row of `input` with `classifier` (an `AgileClassifier`, or anything
    `toolkit.export.source.load_classifier` takes: a saved classifier, a run, a sweep,
    an export) into `output`, in the output's format (by its suffix)."""
    from tqdm.auto import tqdm

    src, dst = Path(input), Path(output)
    if not src.is_file():
        raise DataError(f"--input {src}: " + ("is a directory, not a file" if src.is_dir() else "no such file"))
    if chunk_rows < 1:
        raise PredictError(f"--chunk-rows: got {chunk_rows}; must be >= 1")
    in_fmt, out_fmt = _file_format(src, input_format), _file_format(dst, None)
    if out_fmt not in ("csv", "tsv", "jsonl", "parquet"):
        raise DataError(f"--output {dst}: {out_fmt} output is not supported; use .csv, .tsv, .jsonl or .parquet")
    if dst.exists() and not overwrite:
        raise PredictError(f"--output {dst}: exists; pass --overwrite to replace it, or choose another path")
    work = _parts_dir(dst)
    meta = {"input": str(src.resolve()), "size": src.stat().st_size, "mtime_ns": src.stat().st_mtime_ns,
            "text_column": text_column, "chunk_rows": chunk_rows, "format": out_fmt,
            "classifier": _where(classifier) if isinstance(classifier, (str, Path)) else
            getattr(classifier, "source_dir", None)}
    if work.exists() and not resume:
        raise PredictError(f"--output {dst}: an earlier run's parts are in {work}; pass --resume to continue "
                              f"it, or remove that folder to start over")
    if resume and work.exists():
        saved = json.loads((work / "job.json").read_text()) if (work / "job.json").is_file() else {}
        if saved != meta:
            changed = sorted(k for k in meta if saved.get(k) != meta[k])
            raise PredictError(f"--resume: {work} was written for another job (changed: {changed}); remove it to "
                            "start over")
    rows_total = sum(len(c) for c in _chunks(src, in_fmt, text_column, chunk_rows, delimiter))  # checks every row
    if isinstance(classifier, (str, Path)):
        from toolkit.export.source import load_classifier

        classifier, _ = load_classifier(classifier, progress=False, flag="--classifier")
    _check_no_clash(classifier, next(_chunks(src, in_fmt, text_column, 1, delimiter)).columns, src)
    was, classifier.progress = classifier.progress, False  # one bar: predict's own, over rows
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "job.json").is_file():
        with atomic_path(work / "job.json") as tmp:
            tmp.write_text(json.dumps(meta))
    ext = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "parquet": "parquet"}[out_fmt]
    done = 0
    while (work / _PART.format(done, ext)).is_file():
        done += 1
    parts, resumed_rows, scored = [], 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=rows_total, unit="row", disable=not progress, dynamic_ncols=True, desc="predict")
    try:
        for i, frame in enumerate(_chunks(src, in_fmt, text_column, chunk_rows, delimiter)):
            part = work / _PART.format(i, ext)
            parts.append(part)
            if i < done:  # finished by an earlier run
                resumed_rows += len(frame)
            else:
                _write_part(_scored(classifier, frame, text_column), part, out_fmt, header=(i == 0),
                            delimiter=delimiter)
                scored += len(frame)
            bar.update(len(frame))
    finally:
        bar.close()
        classifier.progress = was
    _join(parts, dst, out_fmt)
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return PredictStats(rows=resumed_rows + scored, resumed_rows=resumed_rows, seconds=seconds,
                        rows_per_s=scored / max(seconds, 1e-9), output=str(dst))
