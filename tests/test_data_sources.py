"""Data sources: the codelab's ETHOS split, the download cache, file formats, pandas,
a real TFDS round trip, and every bad input named by source, column, row and value."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from conftest import ETHOS

from toolkit.data import sources
from toolkit.data.sources import (
    ETHOS_CATEGORIES,
    DataError,
    check_labels,
    ethos_split,
    from_dataframe,
    load_ethos,
    load_tfds,
    read_table,
    take_subset,
)

BINARY = "Ethos_Dataset_Binary.csv"
DEAD_URL = "http://127.0.0.1:9/"  # the discard port: connection refused at once


@pytest.fixture(scope="module")
def ethos() -> pd.DataFrame:
    return load_ethos(local_dir=ETHOS)


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test: proves a cached/local copy was used."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected download: {args}")

    monkeypatch.setattr(sources.urllib.request, "urlopen", refuse)


# --------------------------------------------------------------------------- ETHOS


def test_ethos_binary_follows_the_codelab_recipe(ethos):
    raw = pd.read_csv(ETHOS / BINARY, delimiter=";")  # the codelab's own read
    assert list(ethos.columns) == ["text", "label"] and len(ethos) == 998
    assert ethos["text"].tolist() == raw["comment"].tolist()
    assert (ethos["label"] == (raw["isHate"] >= raw["isHate"].median()).astype(int)).all()
    assert ethos["label"].value_counts().to_dict() == {1: 515, 0: 483}


def test_ethos_split_matches_the_codelab(ethos):
    train, test = ethos_split(ethos)
    assert (len(train), len(test)) == (800, 198)
    assert list(train.index[:5]) == [517, 685, 706, 182, 829]
    assert list(train["label"][:5]) == [0, 0, 0, 1, 0]
    assert int(train["label"].sum()) == 402 and int(test["label"].sum()) == 113
    assert int(train.index.to_numpy().sum()) == 403957 and int(test.index.to_numpy().sum()) == 93546
    assert list(test.index[:10]) == [500, 875, 384, 569, 287, 616, 972, 265, 232, 645]
    assert set(train.index).isdisjoint(test.index)


def test_take_subset_is_the_first_n_shuffled_rows(ethos):
    train, _ = ethos_split(ethos)
    subsets = {n: take_subset(train, n) for n in (200, 400, 800)}
    assert list(subsets[200].index) == list(train.index[:200])
    assert list(subsets[400].index[:200]) == list(subsets[200].index)  # nested, as in the codelab
    assert len(subsets[800]) == 800
    with pytest.raises(DataError, match=r"train_size=900 is larger than the training set \(800 rows\)"):
        take_subset(train, 900)
    with pytest.raises(DataError, match="positive integer"):
        take_subset(train, 0)


def test_ethos_multilabel_has_eight_binary_categories():
    ml = load_ethos("multilabel", local_dir=ETHOS)
    assert ml.shape == (433, 9) and list(ml.columns) == ["text", *ETHOS_CATEGORIES]
    assert all(ml[c].dtype.kind == "i" for c in ETHOS_CATEGORIES)
    assert set(np.unique(ml[list(ETHOS_CATEGORIES)])) == {0, 1}
    counts = {c: int(ml[c].sum()) for c in ETHOS_CATEGORIES}
    assert counts == {"violence": 142, "directed_vs_generalized": 135, "gender": 86, "race": 76,
                      "national_origin": 74, "disability": 53, "religion": 81, "sexual_orientation": 73}


def test_ethos_unknown_variant_and_missing_local_copy(tmp_path):
    with pytest.raises(DataError, match=r"unknown ETHOS variant 'ternary'.*\['binary', 'multilabel'\]"):
        load_ethos("ternary", local_dir=ETHOS)
    with pytest.raises(DataError, match=rf"{BINARY} not found \(local_dir=.*download it from https://"):
        load_ethos(local_dir=tmp_path)


# --------------------------------------------------------------------------- cache and download


def test_cached_ethos_is_used_without_network(tmp_path, no_network, monkeypatch):
    monkeypatch.delenv("AGILE_TOOLKIT_DATA", raising=False)
    shutil.copy(ETHOS / BINARY, tmp_path / BINARY)
    assert len(load_ethos(cache_dir=tmp_path)) == 998


def test_data_root_then_cache_come_from_the_environment(tmp_path, monkeypatch, no_network):
    (tmp_path / "data" / "ethos").mkdir(parents=True)
    shutil.copy(ETHOS / BINARY, tmp_path / "data" / "ethos" / BINARY)
    monkeypatch.setenv("AGILE_TOOLKIT_DATA", str(tmp_path / "data"))  # $AGILE_TOOLKIT_DATA/<source>/
    assert len(load_ethos(cache_dir=tmp_path / "empty")) == 998  # found before the (empty) cache
    monkeypatch.setenv("AGILE_TOOLKIT_DATA", str(tmp_path / "elsewhere"))  # no copy there: the cache
    shutil.copy(ETHOS / BINARY, tmp_path / BINARY)
    assert len(load_ethos(cache_dir=tmp_path)) == 998
    monkeypatch.setenv("AGILE_TOOLKIT_CACHE", str(tmp_path / "root"))
    assert sources.default_cache_dir() == tmp_path / "root" / "datasets"


def test_a_local_dir_that_is_not_a_directory_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data.local_dir '.*nowhere' is not a directory; point it at the folder"):
        load_ethos(local_dir=tmp_path / "nowhere")


def test_offline_empty_cache_says_how_to_point_at_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("AGILE_TOOLKIT_DATA", raising=False)
    url = DEAD_URL + BINARY
    monkeypatch.setitem(sources.ETHOS_URLS, "binary", url)
    with pytest.raises(DataError) as err:
        load_ethos(cache_dir=tmp_path)
    message = str(err.value)
    assert url in message and "local_dir=" in message and "$AGILE_TOOLKIT_DATA/ethos/" in message
    assert "data.local_dir" in message
    assert not list(tmp_path.iterdir())  # no partial download left behind


def test_download_is_atomic_and_happens_once(tmp_path, monkeypatch):
    """A real HTTP download from a local server (no internet), then the cache alone."""
    monkeypatch.delenv("AGILE_TOOLKIT_DATA", raising=False)
    handler = functools.partial(QuietHandler, directory=str(ETHOS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setitem(sources.ETHOS_URLS, "binary", f"http://127.0.0.1:{server.server_port}/{BINARY}")
        first = load_ethos(cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [BINARY]  # no temp file left
    assert (tmp_path / "cache" / BINARY).read_bytes() == (ETHOS / BINARY).read_bytes()
    monkeypatch.setattr(sources.urllib.request, "urlopen", _refuse)
    pd.testing.assert_frame_equal(load_ethos(cache_dir=tmp_path / "cache"), first)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _refuse(*args, **kwargs):
    raise AssertionError("downloaded a cached file again")


# --------------------------------------------------------------------------- file formats

FRAME = pd.DataFrame({"body": ["good one", "bad, one", "naïve café\nsecond line", "NA"],
                      "y": ["pos", "neg", "pos", "neg"]})
WRITERS = {
    "csv": lambda df, p: df.to_csv(p, index=False),
    "tsv": lambda df, p: df.to_csv(p, sep="\t", index=False),
    "jsonl": lambda df, p: df.to_json(p, orient="records", lines=True, force_ascii=False),
    "json": lambda df, p: df.to_json(p, orient="records", force_ascii=False),  # one JSON array
    "parquet": lambda df, p: df.to_parquet(p),
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_formats_round_trip(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    WRITERS[fmt](FRAME, path)
    out = read_table(path, "body", "y")
    assert list(out.columns) == ["text", "label"]
    assert out["text"].tolist() == FRAME["body"].tolist() and out["label"].tolist() == FRAME["y"].tolist()


def test_format_argument_overrides_the_suffix_and_labels_keep_their_type(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("label|text\n1|first\n0|second\n", encoding="utf-8")
    out = read_table(path, format="csv", delimiter="|")
    assert out["label"].tolist() == [1, 0] and out["text"].tolist() == ["first", "second"]
    with pytest.raises(DataError, match=r"data.txt: cannot tell the format from the suffix '.txt'; pass format="):
        read_table(path)


# --------------------------------------------------------------------------- bad files


def _write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"data file '.*missing.csv' does not exist"):
        read_table(tmp_path / "missing.csv")


def test_wrong_delimiter_suggests_the_right_one(tmp_path):
    # Parses as one column: the expected columns are missing, the header holds ';'.
    with pytest.raises(DataError, match=r"column 'text' not found; columns found: \['text;label'\].*delimiter=';'"):
        read_table(_write(tmp_path, "text;label\nhello;a\n"))
    # Does not parse at all (commas inside the ';'-separated text): the same advice.
    with pytest.raises(DataError, match=r"could not parse .* delimiter ','.*splits on it into \['comment', 'isHate'\]"
                                        r".*delimiter=';'"):
        read_table(ETHOS / BINARY, "comment", "isHate")
    assert len(read_table(ETHOS / BINARY, "comment", "isHate", delimiter=";")) == 998


def test_missing_column_lists_the_columns_found(tmp_path):
    with pytest.raises(DataError, match=r"d.csv: column 'label' not found; columns found: \['text', 'lab'\]\. "
                                        r"Did you mean 'lab'\?.*label_column="):
        read_table(_write(tmp_path, "text,lab\nhi,a\n"))


def test_empty_text_names_row_line_and_value(tmp_path):
    # The quoted two-line field makes row numbers and file lines differ.
    path = _write(tmp_path, 'text,label\n"two\nlines",a\nok,b\n"   ",b\n,a\n')
    with pytest.raises(DataError) as err:
        read_table(path)
    message = str(err.value)
    assert f"{path}: row 3 (line 5 of the file), column 'text': text is empty or whitespace-only ('   ')" in message
    assert "Also 1 more row(s) with problems in this column: 4." in message


def test_missing_and_empty_labels(tmp_path):
    with pytest.raises(DataError, match=r"row 1 \(line 2 of the file\), column 'label': label is missing"):
        read_table(_write(tmp_path, "text,label\nhi,\nyo,b\n"))
    with pytest.raises(DataError, match=r"row 2 \(line 3 of the file\), column 'label': label is empty or "
                                        r"whitespace-only \('  '\)"):
        read_table(_write(tmp_path, 'text,label\nhi,a\nyo,"  "\n'))


def test_empty_dataset_and_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"d.csv: empty dataset \(a header but no data rows\)"):
        read_table(_write(tmp_path, "text,label\n"))
    with pytest.raises(DataError, match=r"e.csv: the file is empty"):
        read_table(_write(tmp_path, "", "e.csv"))
    with pytest.raises(DataError, match=r"e.jsonl: empty dataset"):
        read_table(_write(tmp_path, "\n", "e.jsonl"))


def test_non_utf8_bytes_name_row_line_and_offset(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\nfine,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv: not valid UTF-8 at byte offset 21 \(row 2, line 3 of the file\)"
                                        r": b'\\xe9,b\\n'.*iconv"):
        read_table(bad)
    jl = tmp_path / "latin1.jsonl"
    jl.write_bytes(b'{"text": "ok", "label": 1}\n\n{"text": "caf\xe9", "label": 0}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl: not valid UTF-8 at byte offset 41 "
                                        r"\(row 2, line 3 of the file\)"):
        read_table(jl)


def test_bad_jsonl_lines(tmp_path):
    with pytest.raises(DataError, match=r"d.jsonl: line 2 is not valid JSON"):
        read_table(_write(tmp_path, '{"text": "a", "label": 1}\n{"text": \n', "d.jsonl"))
    with pytest.raises(DataError, match=r"d.jsonl: line 1 is a JSON list, expected an object"):
        read_table(_write(tmp_path, '["a", 1]\n', "d.jsonl"))
    with pytest.raises(DataError, match=r"row 2 \(line 3 of the file\), column 'text': text is missing"):
        read_table(_write(tmp_path, '{"text": "a", "label": 1}\n\n{"label": 0}\n', "d.jsonl"))


def test_bad_parquet(tmp_path):
    with pytest.raises(DataError, match=r"x.parquet: not a readable Parquet file"):
        read_table(_write(tmp_path, "text,label\na,b\n", "x.parquet"))
    path = tmp_path / "bytes.parquet"
    pd.DataFrame({"text": [b"ok", b"caf\xe9"], "label": ["a", "b"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"bytes.parquet: row 2, column 'text': text is not valid UTF-8 at byte "
                                        r"offset 3 of the value"):
        read_table(path)


# --------------------------------------------------------------------------- pandas


def test_from_dataframe_keeps_the_index_and_leaves_the_input_alone():
    df = pd.DataFrame({"msg": ["a", "b"], "kind": [1, 0], "extra": [9, 9]}, index=[10, 20])
    out = from_dataframe(df, "msg", "kind")
    assert list(out.columns) == ["text", "label"] and list(out.index) == [10, 20]
    assert out["label"].tolist() == [1, 0] and list(df.columns) == ["msg", "kind", "extra"]


def test_from_dataframe_names_row_and_index_label():
    df = pd.DataFrame({"text": ["a", None, 3], "label": ["x", "y", "x"]}, index=["r1", "r2", "r3"])
    with pytest.raises(DataError, match=r"my frame: row 2 \(index 'r2'\), column 'text': text is missing"
                                        r".*in this column: 3\."):
        from_dataframe(df, source="my frame")
    with pytest.raises(DataError, match=r"row 1, column 'text': text must be a string, got int 3"):
        from_dataframe(pd.DataFrame({"text": [3], "label": ["x"]}))
    with pytest.raises(DataError, match=r"DataFrame: empty dataset"):
        from_dataframe(pd.DataFrame({"text": [], "label": []}))
    with pytest.raises(DataError, match=r"row 2, column 'label': label is missing"):
        from_dataframe(pd.DataFrame({"text": ["a", "b"], "label": [1.0, np.nan]}))


# --------------------------------------------------------------------------- label set checks


def test_unknown_label_names_row_value_and_allowed_set():
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "z"]})
    with pytest.raises(DataError, match=r"t: row 3, column 'label': label 'z' is not one of the allowed labels "
                                        r"\['x', 'y'\]"):
        check_labels(df, ["x", "y"], source="t")
    with pytest.raises(DataError, match="no allowed labels"):
        check_labels(df, [], source="t")
    ints = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    with pytest.raises(DataError, match=r"label 0 is not one of .*it is a int, the labels are str"):
        check_labels(ints, ["0", "1"], source="t")
    with pytest.raises(DataError, match=r"data.label_names"):
        check_labels(ints, ["no", "yes"], source="t")


def test_class_without_examples_is_named_with_counts():
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "x", "y"]})
    with pytest.raises(DataError, match=r"t: class 'w' has no examples \(examples per class: "
                                        r"\{'x': 2, 'y': 1, 'w': 0\}\)"):
        check_labels(df, ["x", "y", "w"], source="t")
    check_labels(df, ["x", "y", "w"], source="t", require_all=False)
    check_labels(df, ["x", "y"], source="t")
    with pytest.raises(DataError, match="no allowed labels"):
        check_labels(df, [], source="t")


# --------------------------------------------------------------------------- TFDS (real builders, tmp data_dir)


class AgileToolkitTinyReviews(tfds.core.GeneratorBasedBuilder):
    """~20 rows with a ClassLabel: prepared by load_tfds itself, no network."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"sentence": tfds.features.Text(), "polarity": tfds.features.ClassLabel(names=["neg", "pos"]),
                    "note": tfds.features.Text()}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                     supervised_keys=("sentence", "polarity"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 16), "test": self._generate_examples(16, 20)}

    def _generate_examples(self, start, stop):
        for i in range(start, stop):
            yield i, {"sentence": f"review {i} naïve", "polarity": i % 2, "note": f"note {i}"}


class AgileToolkitNeedsDownload(tfds.core.GeneratorBasedBuilder):
    """Needs a file from the network: what an unprepared catalog dataset looks like offline."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["a", "b"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(dl_manager.download(DEAD_URL + "data.csv"))}

    def _generate_examples(self, path):
        yield 0, {"text": "x", "label": 0}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfds")


def test_tfds_round_trip_through_a_real_builder(tfds_dir):
    df = load_tfds("agile_toolkit_tiny_reviews", "train", data_dir=tfds_dir)  # prepares it
    assert (tfds_dir / "agile_toolkit_tiny_reviews" / "1.0.0").is_dir()
    assert list(df.columns) == ["text", "label"] and len(df) == 16
    by_text = dict(zip(df["text"], df["label"]))
    assert by_text == {f"review {i} naïve": ["neg", "pos"][i % 2] for i in range(16)}
    test = load_tfds("agile_toolkit_tiny_reviews", "test", data_dir=tfds_dir, label_names=False)
    assert sorted(test["label"].tolist()) == [0, 0, 1, 1]


def test_tfds_explicit_keys_and_bad_split(tfds_dir):
    df = load_tfds("agile_toolkit_tiny_reviews", "test", text_key="note", data_dir=tfds_dir)
    assert sorted(df["text"]) == [f"note {i}" for i in range(16, 20)]
    with pytest.raises(DataError, match=r"feature 'nope' \(label_key\) not found; features: \['note', 'polarity', "
                                        r"'sentence'\]"):
        load_tfds("agile_toolkit_tiny_reviews", "test", label_key="nope", data_dir=tfds_dir)
    with pytest.raises(DataError, match=r"cannot read split 'validation'.*splits: \['test', 'train'\]"):
        load_tfds("agile_toolkit_tiny_reviews", "validation", data_dir=tfds_dir)


@pytest.mark.slow
def test_tfds_unknown_name(tmp_path):
    with pytest.raises(DataError, match=r"TFDS has no dataset named 'no_such_dataset_xyz'.*data_dir="):
        load_tfds("no_such_dataset_xyz", data_dir=tmp_path)


def test_tfds_offline_unprepared_dataset_says_how_to_prepare_it(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"not prepared under .* and download=False.*tfds build "
                                        r"agile_toolkit_needs_download --data_dir DIR.*data_dir=DIR"):
        load_tfds("agile_toolkit_needs_download", data_dir=tmp_path, download=False)
    # TFDS retries a refused connection for ~3.5 minutes by default; one try shows the same failure.
    from tensorflow_datasets.core.download import downloader

    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)
    with pytest.raises(DataError, match=r"preparing it failed \(.*127.0.0.1.*\).*tfds build .*data_dir=DIR"):
        load_tfds("agile_toolkit_needs_download", data_dir=tmp_path)


@pytest.mark.slow
def test_a_shipped_config_without_the_test_bed_fails_in_one_line_then_reads_the_data_root(tmp_path, monkeypatch):
    """sweeps/ethos_270m.yaml names no data path: with no $AGILE_TOOLKIT_DATA, an empty cache
    and no network (a dead proxy) the train CLI stops with one line saying where to put the
    file, and writes no run; with $AGILE_TOOLKIT_DATA set, the same config's data loads."""
    import subprocess
    import sys

    from conftest import ROOT, subprocess_env
    from toolkit.config import load_config
    from toolkit.data.datasets import load_splits

    env = subprocess_env(AGILE_TOOLKIT_CACHE=str(tmp_path / "cache"), HTTPS_PROXY="http://127.0.0.1:9",
                         https_proxy="http://127.0.0.1:9")
    env.pop("AGILE_TOOLKIT_DATA", None)
    config = ROOT / "sweeps/ethos_270m.yaml"
    r = subprocess.run([sys.executable, str(ROOT / "launch/train.py"), "--config", str(config), "--quiet",
                        f"output_dir={tmp_path / 'runs'}", "model.name=random:tiny_gemma3"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr[-3000:]
    assert "could not download" in lines[0] and "$AGILE_TOOLKIT_DATA/ethos/" in lines[0], lines[0]
    assert not any((tmp_path / "runs").rglob("*.json")) if (tmp_path / "runs").exists() else True

    monkeypatch.setenv("AGILE_TOOLKIT_DATA", str(ETHOS.parent))
    splits = load_splits(load_config(config).data)
    assert len(splits.train) == 200 and len(splits.test) == 198
