"""Data sources: the codelab's ETHOS split, file formats, TFDS, and every bad input named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from toolkit.data import sources
from toolkit.data.sources import DataError, check_labels, ethos_split, load_ethos, read_table, take_subset

ETHOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ethos"


def test_ethos_split_matches_the_codelab():
    train, test = ethos_split(load_ethos(local_dir=ETHOS))
    assert (len(train), len(test)) == (800, 198)
    assert list(train.index[:5]) == [517, 685, 706, 182, 829]
    assert list(train["label"][:5]) == [0, 0, 0, 1, 0]
    assert int(test["label"].sum()) == 113 and int(train["label"].sum()) == 402
    assert int(train.index.to_numpy().sum()) == 403957 and list(test.index[:3]) == [500, 875, 384]
    assert list(take_subset(train, 200).index) == list(train.index[:200])
    with pytest.raises(DataError, match="train_size=900"):
        take_subset(train, 900)


def test_ethos_multilabel_has_eight_binary_categories():
    ml = load_ethos("multilabel", local_dir=ETHOS)
    assert ml.shape == (433, 9) and set(np.unique(ml.iloc[:, 1:])) == {0, 1}
    assert ml["violence"].sum() == 142


def test_cached_ethos_is_used_without_network(tmp_path, monkeypatch):
    shutil.copy(ETHOS / "Ethos_Dataset_Binary.csv", tmp_path / "Ethos_Dataset_Binary.csv")

    def no_network(*a, **k):
        raise AssertionError("tried to download a cached file")

    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)
    assert len(load_ethos(cache_dir=tmp_path)) == 998


def test_offline_empty_cache_says_how_to_point_at_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setitem(sources.ETHOS_URLS, "binary", "http://127.0.0.1:9/Ethos_Dataset_Binary.csv")
    with pytest.raises(DataError, match="local_dir"):
        load_ethos(cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # no partial download left behind


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_formats_round_trip(tmp_path, fmt):
    df = pd.DataFrame({"body": ["good one", "bad one", "naïve café"], "y": ["pos", "neg", "pos"]})
    path = tmp_path / f"d.{fmt}"
    {"csv": lambda: df.to_csv(path, index=False), "tsv": lambda: df.to_csv(path, sep="\t", index=False),
     "jsonl": lambda: df.to_json(path, orient="records", lines=True, force_ascii=False),
     "parquet": lambda: df.to_parquet(path)}[fmt]()
    out = read_table(path, "body", "y")
    assert out["text"].tolist() == df["body"].tolist() and out["label"].tolist() == df["y"].tolist()


def _csv(tmp_path, text: str, name="d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_bad_files_are_named_by_file_column_row_and_value(tmp_path):
    with pytest.raises(DataError, match="missing.csv: file not found"):
        read_table(tmp_path / "missing.csv")
    semi = _csv(tmp_path, "text;label\nhello;a\n")
    with pytest.raises(DataError, match="delimiter=';'"):
        read_table(semi)
    with pytest.raises(DataError, match=r"column\(s\) \['label'\] not found; columns are \['text', 'lab'\]"):
        read_table(_csv(tmp_path, "text,lab\nhi,a\n"))
    with pytest.raises(DataError, match=r"row 2 \(line 3 of the file\), column 'text': text is empty"):
        read_table(_csv(tmp_path, 'text,label\nhi,a\n"   ",b\n'))
    with pytest.raises(DataError, match=r"row 1 \(line 2 of the file\), column 'label': label is missing"):
        read_table(_csv(tmp_path, "text,label\nhi,\n"))
    with pytest.raises(DataError, match="empty"):
        read_table(_csv(tmp_path, "text,label\n"))
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv: not UTF-8: byte 0xe9 at offset 14 \(line 2\)"):
        read_table(bad)


def test_label_checks_name_the_row_and_the_empty_class():
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "z"]})
    with pytest.raises(DataError, match=r"row 3: label 'z' is not in the label set \['x', 'y'\]"):
        check_labels(df, ["x", "y"], source="t")
    with pytest.raises(DataError, match=r"class\(es\) \['w'\] have no examples"):
        check_labels(df, ["x", "y", "z", "w"], source="t")
    check_labels(df, ["x", "y", "z", "w"], source="t", require_all=False)


def test_tfds_round_trip_through_a_real_builder(tmp_path):
    import tensorflow_datasets as tfds

    class TinyReviews(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["neg", "pos"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(12), "test": self._generate_examples(4)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": f"review number {i}", "label": i % 2}

    TinyReviews(data_dir=str(tmp_path)).download_and_prepare()
    df = sources.load_tfds("tiny_reviews", "train", data_dir=str(tmp_path))
    assert len(df) == 12 and set(df["label"]) == {"neg", "pos"} and df["text"].str.startswith("review").all()
