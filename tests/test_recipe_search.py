"""bench/recipe_search.py: the second data set's loader, the recipes' keyword arguments,
and a real (tiny) test-mode search that resumes and draws its table and figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import recipe_search as rs  # noqa: E402

POS = ["a wonderful film", "great acting and a moving story", "loved every minute", "the best movie this year"]
NEG = ["a dull mess", "boring and far too long", "the plot makes no sense", "i walked out halfway"]


def write_fixture(d: Path, n: int = 1000) -> Path:
    """imdb.json shaped like the `sentiment` package's fixture: {text, class}, one empty row at the end."""
    rows = [{"text": f"{(POS if i % 2 else NEG)[i % 4]} #{i}  ", "class": i % 2} for i in range(n)]
    rows += [{"text": rows[0]["text"], "class": 0}, {"text": "", "class": None}]  # a duplicate, the empty row
    d.mkdir(parents=True, exist_ok=True)
    (d / "imdb.json").write_text(json.dumps(rows))
    return d


def test_uci_imdb_split(tmp_path):
    d = write_fixture(tmp_path / "uci")
    train, test, task = rs.DATASETS["uci_imdb"](str(d))
    assert (len(train), len(test)) == (800, 200)  # 1000 distinct texts: the duplicate and the empty row dropped
    assert set(train["label"]) == {0, 1} and train["label"].dtype.kind == "i"
    assert not set(train["text"]) & set(test["text"])
    assert all(t == t.strip() for t in train["text"])
    again, _, _ = rs.DATASETS["uci_imdb"](str(d))
    assert again["text"].tolist() == train["text"].tolist()  # a fixed shuffle: nested subsets stay nested
    assert task["labels"][1] == "yes" and "positive" in task["question"]


def test_uci_imdb_missing_file_names_it(tmp_path):
    with pytest.raises(SystemExit, match=r"imdb\.json not found.*sentiment@"):
        rs.DATASETS["uci_imdb"](str(tmp_path))


def test_recipe_kwargs():
    task = {"labels": ("no", "yes"), "question": "Is it? Answer yes or no", "codelab_labels": ("Positive", "Negative")}
    labels, kw = rs.classifier_kwargs("default", task, 200)
    assert labels == ("no", "yes") and kw == {"prompt": {"instructions": "Is it? Answer yes or no"}}
    labels, kw = rs.classifier_kwargs("codelab", task, 800)
    assert labels == ("Positive", "Negative") and kw["train"]["epochs"] == 2 and kw["lora"]["targets"] == ["q", "v"]
    assert kw["prompt"] == {"separator": "<separator>"}
    assert rs.classifier_kwargs("codelab", task, 200)[1]["train"]["epochs"] == 4
    assert rs.RECIPES["codelab"]["epochs_at"] == {800: 2}  # classifier_kwargs must not pop the shared dict
    _, kw = rs.classifier_kwargs("zeroshot", task, 0)
    assert kw["zero_shot"] is True  # the untrained model, asked for explicitly


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "recipe_search.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_search_on_a_tiny_model_resumes_and_tabulates(tmp_path):
    d = write_fixture(tmp_path / "uci")
    out = tmp_path / "results"
    common = ["--dataset", "uci_imdb", "--data-dir", str(d), "--model", "random:tiny_gemma3", "--results", str(out)]
    p = run("test", *common, "--recipes", "zeroshot", "default", "tfidf", "--sizes", "0", "16", "--seeds", "0",
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    log = json.loads((out / "recipe_test_uci_imdb.json").read_text())
    keys = sorted((r["recipe"], r["size"]) for r in log["runs"])
    assert keys == [("default", 16), ("tfidf", 16), ("zeroshot", 0)]  # zeroshot only at 0, the others only at 16
    assert "skipping default at 0 rows" in p.stdout
    for r in log["runs"]:
        assert 0.0 <= r["roc_auc"] <= 1.0 and r["wall_s"] >= 0
    default = next(r for r in log["runs"] if r["recipe"] == "default")
    assert default["config"]["lora"]["rank"] == 8 and default["config"]["train"]["epochs"] == 3  # what a user gets

    again = run("test", *common, "--recipes", "default", "--sizes", "16", "--seeds", "0", cwd=tmp_path)
    assert again.returncode == 0 and not [ln for ln in again.stdout.splitlines() if ln.startswith("{")]
    assert len(json.loads((out / "recipe_test_uci_imdb.json").read_text())["runs"]) == 3  # nothing rerun

    t = run("table", *common, cwd=tmp_path)
    assert t.returncode == 0, t.stderr[-2000:]
    md = (out / "recipe_search_uci_imdb.md").read_text()
    assert "| 16 | default | 1 |" in md and "| 0 | zeroshot | 1 |" in md
    png = (out / "recipe_test_uci_imdb.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert not list(out.glob(".*tmp*"))  # no temp files left by the atomic writes
