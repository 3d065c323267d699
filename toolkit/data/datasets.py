"""From a `DataSection` to (train, test) frames of class names: the one place
that decides which rows a run trains and tests on."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd

from toolkit.config import DataSection
from toolkit.data import sources

log = logging.getLogger(__name__)


def _named(df: pd.DataFrame, label_names: dict[str, str] | None, source: str = "data",
           delimiter: str | None = None) -> pd.DataFrame:
    if not label_names:
        return df.assign(label=df["label"].astype(str))
    mapped = df["label"].map(lambda v: label_names.get(str(v), label_names.get(str(int(v)) if _is_intlike(v) else "")))
    missing = df["label"][mapped.isna()]
    if len(missing):
        raise sources.DataError(f"{source}: {sources.file_row(source, int(missing.index[0]), delimiter)}, "
                                f"column 'label': data.label_names "
                                f"{label_names} has no entry for label value {_plain(missing.iloc[0])!r}; add it to "
                                "data.label_names")
    return df.assign(label=mapped)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _is_intlike(v: Any) -> bool:
    try:
        return float(v).is_integer()
    except (TypeError, ValueError):
        return False


class Splits(NamedTuple):
    train: pd.DataFrame
    test: pd.DataFrame
    validation: pd.DataFrame | None


def stratified_order(labels: Sequence[Any], seed: int) -> np.ndarray:
    """Positions in a seeded shuffle whose every prefix (and suffix) holds each class
    in its overall share, give or take one row: within a class the rows are shuffled
    and spread one per 1/n_class of the order, then the classes are merged."""
    rng = np.random.default_rng(seed)
    labels = np.asarray([str(v) for v in labels])
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        keys[idx] = (np.arange(len(idx)) + rng.random(len(idx))) / len(idx)
    return np.argsort(keys, kind="stable")


def _shuffled(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    return df.iloc[stratified_order(df["label"], seed)]


def _warn_missing_classes(part: pd.DataFrame, train: pd.DataFrame, what: str) -> None:
    missing = sorted(set(train["label"].astype(str)) - set(part["label"].astype(str)))
    if missing:
        log.warning("the %s rows (%d) hold no example of class(es) %s: ROC-AUC / PR-AUC are undefined on them; "
                    "use more %s rows", what, len(part), missing, what)


def _check_validation_size(cfg: DataSection, train: pd.DataFrame) -> None:
    if not 0 < cfg.validation_size < len(train):
        raise sources.DataError(f"data.validation_size={cfg.validation_size} must be between 1 and "
                                f"{len(train) - 1} (the train part has {len(train)} rows)")


def category_columns(frame: pd.DataFrame) -> list[str]:
    """The category columns of a multi-label split (every column but the text)."""
    return [c for c in frame.columns if c != "text"]


def _multilabel_splits(cfg: DataSection, categories: Sequence[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    if cfg.source == "ethos_multilabel":
        return sources.ethos_multilabel_split(cache_dir=cfg.cache_dir, local_dir=cfg.local_dir)
    if cfg.source.startswith("tfds:"):
        raise sources.DataError(f"data.source {cfg.source}: multi-label TFDS sources are not supported; export the "
                                "rows to a CSV / JSONL file with one 0/1 column per category")
    kw = dict(label_columns=cfg.label_columns, label_column=None if cfg.label_columns else cfg.label_column,
              label_delimiter=cfg.label_delimiter, categories=categories, delimiter=cfg.delimiter)
    df = sources.read_multilabel_table(cfg.source, cfg.text_column, **kw)

    def shuffled(frame: pd.DataFrame) -> pd.DataFrame:  # stratified by each row's set of categories
        sets = frame[sorted(category_columns(frame))].astype(str).agg("".join, axis=1)
        return frame.iloc[stratified_order(sets, cfg.split_seed)]

    if cfg.test_path:
        return shuffled(df), sources.read_multilabel_table(cfg.test_path, cfg.text_column, **kw)
    df = shuffled(df)
    n_test = max(1, int(round(cfg.test_fraction * len(df))))
    return df.iloc[n_test:], df.iloc[:n_test]


def _pick_categories(frames: list[pd.DataFrame], categories: Sequence[str] | None, source: str) -> list[pd.DataFrame]:
    """Keep (and order) the categories a run asks for; each must be one the data has."""
    if not categories:
        return frames
    have = category_columns(frames[0])
    unknown = [c for c in categories if c not in have]
    if unknown:
        raise sources.DataError(f"{source}: classifier.categories {unknown} are not categories of the data "
                                f"({have}); choose among those")
    return [f[["text", *categories]] for f in frames]


def load_splits(cfg: DataSection, categories: Sequence[str] | None = None) -> Splits:
    """(train, test, validation) with columns text, label (class names), or for multi-label
    data (`cfg.multilabel`) text plus one 0/1 column per category (`categories`, default
    all the data has); see `DataSection` for how each split is drawn."""
    src = cfg.source
    if cfg.multilabel:
        train, test = _pick_categories(list(_multilabel_splits(cfg, categories)), categories, src)
        validation = None
        if cfg.validation_size:
            _check_validation_size(cfg, train)
            train, validation = train.iloc[:-cfg.validation_size], train.iloc[-cfg.validation_size:]
        if cfg.train_size is not None:
            train = sources.take_subset(train, cfg.train_size)
        return Splits(train, test, validation)
    if src == "ethos":
        df = sources.load_ethos("binary", cache_dir=cfg.cache_dir, local_dir=cfg.local_dir)
        train, test = sources.ethos_split(df)  # the codelab's seeded split, kept as is
    elif src.startswith("tfds:"):
        name = src.split(":", 1)[1]
        kw = dict(text_key=None if cfg.text_column == "text" else cfg.text_column,
                  label_key=None if cfg.label_column == "label" else cfg.label_column, data_dir=cfg.local_dir)
        train = _shuffled(sources.load_tfds(name, "train", **kw), cfg.split_seed)
        test = sources.load_tfds(name, "test", **kw)
    else:
        df = sources.read_table(src, cfg.text_column, cfg.label_column, delimiter=cfg.delimiter)
        if cfg.test_path:
            train, test = _shuffled(df, cfg.split_seed), sources.read_table(
                cfg.test_path, cfg.text_column, cfg.label_column, delimiter=cfg.delimiter)
        else:
            shuffled = _shuffled(df, cfg.split_seed)
            n_test = max(1, int(round(cfg.test_fraction * len(df))))
            train, test = shuffled.iloc[n_test:], shuffled.iloc[:n_test]
    validation = None
    if cfg.validation_size:
        _check_validation_size(cfg, train)
        train, validation = train.iloc[:-cfg.validation_size], _named(train.iloc[-cfg.validation_size:],
                                                                      cfg.label_names, cfg.source, cfg.delimiter)
    if cfg.train_size is not None:
        train = sources.take_subset(train, cfg.train_size)
    test_source = cfg.test_path or cfg.source
    train, test = (_named(train, cfg.label_names, cfg.source, cfg.delimiter),
                   _named(test, cfg.label_names, test_source, cfg.delimiter))
    _warn_missing_classes(test, train, "test")
    if validation is not None:
        _warn_missing_classes(validation, train, "validation")
    return Splits(train, test, validation)
