"""`agile-predict` / `toolkit.predict_file`: every input column plus the class probabilities,
streamed in chunks, atomic, resumable after a SIGKILL to the same bytes, and every bad
input a one-line error that leaves no output behind."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import HAM, ROOT, SPAM, run_cli, subprocess_env
from toolkit.classifier import AgileClassifier
from toolkit.predict import predict_file

SAVED = Path(__file__).parent / "data" / "saved_classifier_v1" / "classifier"


@pytest.fixture(scope="module")
def clf():
    return AgileClassifier.load(SAVED, progress=False)


def _texts(n: int) -> list[str]:
    return [f"{(SPAM + HAM)[i % 6]} {i}" for i in range(n)]


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": range(n), "text": _texts(n), "source": ["mail"] * n})


def _leftovers(directory: Path, output: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{output.name}") or p == output)


@pytest.mark.parametrize("src_name, dst_name", [("in.csv", "out.csv"), ("in.jsonl", "out.parquet"),
                                                ("in.parquet", "out.jsonl"), ("in.tsv", "out.tsv")])
@pytest.mark.slow
def test_every_format_keeps_the_input_columns_and_adds_the_scores(clf, tmp_path, src_name, dst_name):
    df = _frame(10)
    src, dst = tmp_path / src_name, tmp_path / dst_name
    {"csv": lambda: df.to_csv(src, index=False), "tsv": lambda: df.to_csv(src, sep="\t", index=False),
     "jsonl": lambda: df.to_json(src, orient="records", lines=True),
     "parquet": lambda: df.to_parquet(src, index=False)}[src.suffix[1:]]()
    stats = predict_file(clf, src, dst, chunk_rows=3, progress=False)  # 4 chunks, the last of 1 row
    out = {"csv": pd.read_csv, "tsv": lambda p: pd.read_csv(p, sep="\t"),
           "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[dst.suffix[1:]](dst)
    assert list(out.columns) == ["id", "text", "source", "p_spam", "p_ham", "predicted"]
    assert out["id"].tolist() == list(range(10)) and out["text"].tolist() == df["text"].tolist()
    want = clf.predict_proba(df["text"].tolist())
    np.testing.assert_allclose(out[["p_spam", "p_ham"]].to_numpy(), want, atol=1e-6)
    assert out["predicted"].tolist() == list(np.array(["spam", "ham"])[want.argmax(1)])
    assert stats.rows == 10 and stats.resumed_rows == 0
    assert _leftovers(tmp_path, dst) == [dst.name]  # no parts folder left


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_bytes_and_no_partial_output_ever_exists(tmp_path):
    src = tmp_path / "in.csv"
    _frame(1200).to_csv(src, index=False)
    whole = tmp_path / "whole.csv"
    cmd = [sys.executable, str(ROOT / "launch" / "predict.py"), "--classifier", str(SAVED), "--input", str(src),
           "--chunk-rows", "40", "--quiet"]
    r = subprocess.run([*cmd, "--output", str(whole)], capture_output=True, text=True, timeout=600,
                       env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out.csv"
    parts = tmp_path / ".out.csv.parts"
    proc = subprocess.Popen([*cmd, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=subprocess_env())
    deadline, seen_output = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None:
        seen_output |= out.exists()
        if len(list(parts.glob("part-*.csv"))) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not out.exists() and not seen_output
    done = len(list(parts.glob("part-*.csv")))
    r = subprocess.run([*cmd, "--output", str(out), "--resume"], capture_output=True, text=True, timeout=600,
                       env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{done * 40} rows from an earlier run" in r.stdout
    assert out.read_bytes() == whole.read_bytes()
    assert not parts.exists()


def _bad(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case, make, extra, message", [
    ("missing column", lambda d: _bad(d, "in.csv", b"id,body\n1,hello\n"), [],
     r"in.csv: no column 'text' \(columns: \['id', 'body'\]\); pass --text-column"),
    ("empty file", lambda d: _bad(d, "in.csv", b""), [], r"in.csv: the file is empty"),
    ("header only", lambda d: _bad(d, "in.csv", b"text\n"), [], r"in.csv: the file has a header but no rows"),
    ("not UTF-8", lambda d: _bad(d, "in.csv", b"text\nfine\ncaf\xe9 au lait\n"), [],
     r"in.csv: byte 13 \(line 3\) is not UTF-8"),
    ("empty text", lambda d: _bad(d, "in.csv", b"text\nfine\n\"\"\n"), [], r"in.csv: row 2, column 'text': empty"),
    ("a column predict writes", lambda d: _bad(d, "in.csv", b"text,predicted\nfine,x\n"), [],
     r"in.csv: column 'predicted' is one that predict writes"),
    ("not a classifier", lambda d: _bad(d, "in.csv", b"text\nfine\n"), ["--classifier", "{tmp}"],
     r"^error: --classifier \S+ is not an agile-toolkit checkpoint"),
    ("another kind", lambda d: _bad(d, "in.csv", b"text\nfine\n"), ["--classifier", "{tmp}/kind"],
     r"kind 'regression' is not one of"),
    ("weights missing", lambda d: _bad(d, "in.csv", b"text\nfine\n"), ["--classifier", "{tmp}/nobase"],
     r"base.npz: missing"),
])
def test_bad_inputs_are_one_line_and_leave_no_output(tmp_path, case, make, extra, message):
    src = make(tmp_path)
    kind = tmp_path / "kind"
    shutil.copytree(SAVED, kind)
    meta = json.loads((kind / "classifier.json").read_text())
    (kind / "classifier.json").write_text(json.dumps({**meta, "kind": "regression"}))
    shutil.copytree(SAVED, tmp_path / "nobase")
    (tmp_path / "nobase" / "base.npz").unlink()
    args = ["--classifier", str(SAVED)] if not extra else [a.format(tmp=tmp_path) for a in extra]
    out = tmp_path / "out.csv"
    from toolkit.commands.predict import main

    r = run_cli(main, *args, "--input", str(src), "--output", str(out), "--quiet")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert re.search(message, lines[0]), lines[0]
    assert _leftovers(tmp_path, out) == []
