"""From a `DataSection` to (train, test) frames of class names: the one place
that decides which rows a run trains and tests on."""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd

from toolkit.config import DataSection
from toolkit.data import sources


def _named(df: pd.DataFrame, label_names: dict[str, str] | None) -> pd.DataFrame:
    if not label_names:
        return df.assign(label=df["label"].astype(str))
    mapped = df["label"].map(lambda v: label_names.get(str(v), label_names.get(str(int(v)) if _is_intlike(v) else "")))
    missing = df["label"][mapped.isna()]
    if len(missing):
        raise sources.DataError(f"data.label_names {label_names} has no entry for label value "
                                f"{missing.iloc[0]!r} (row {missing.index[0]}); add it to data.label_names")
    return df.assign(label=mapped)


def _is_intlike(v: Any) -> bool:
    try:
        return float(v).is_integer()
    except (TypeError, ValueError):
        return False


class Splits(NamedTuple):
    train: pd.DataFrame
    test: pd.DataFrame
    validation: pd.DataFrame | None


def load_splits(cfg: DataSection) -> Splits:
    """(train, test, validation) with columns text, label (class names). Validation is the
    last `validation_size` rows of the train part (None when 0); train is the first
    `train_size` of the rest."""
    src = cfg.source
    if src == "ethos":
        df = sources.load_ethos("binary", cache_dir=cfg.cache_dir, local_dir=cfg.local_dir)
        train, test = sources.ethos_split(df)
    elif src.startswith("tfds:"):
        name = src.split(":", 1)[1]
        kw = dict(text_key=None if cfg.text_column == "text" else cfg.text_column,
                  label_key=None if cfg.label_column == "label" else cfg.label_column, data_dir=cfg.local_dir)
        train = sources.load_tfds(name, "train", **kw)
        test = sources.load_tfds(name, "test", **kw)
    else:
        df = sources.read_table(src, cfg.text_column, cfg.label_column, delimiter=cfg.delimiter)
        if cfg.test_path:
            train, test = df, sources.read_table(cfg.test_path, cfg.text_column, cfg.label_column,
                                                 delimiter=cfg.delimiter)
        else:
            shuffled = df.sample(frac=1.0, random_state=0)
            n_test = max(1, int(round(cfg.test_fraction * len(df))))
            train, test = shuffled.iloc[n_test:], shuffled.iloc[:n_test]
    validation = None
    if cfg.validation_size:
        if not 0 < cfg.validation_size < len(train):
            raise sources.DataError(f"data.validation_size={cfg.validation_size} must be between 1 and "
                                    f"{len(train) - 1} (the train part has {len(train)} rows)")
        train, validation = train.iloc[:-cfg.validation_size], _named(train.iloc[-cfg.validation_size:],
                                                                      cfg.label_names)
    if cfg.train_size is not None:
        train = sources.take_subset(train, cfg.train_size)
    return Splits(_named(train, cfg.label_names), _named(test, cfg.label_names), validation)
