"""bench/first_fit.py end to end on a tiny random model and a synthetic ETHOS file: the cold and
warm fit processes, the compile log, the steady FLOP rate, and (`--aot-only`) the AOT compile of
a tiny block-scanned Gemma 4, scanned and unrolled. Timings are not judged, only that each was
measured and is sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


HATE = ["you people are vermin", "they should all be thrown out", "go back where you came from"]
FINE = ["the weather is nice today", "i enjoyed the concert", "our team won the match"]


def synthetic_ethos(d: Path, n: int = 840) -> Path:
    """Ethos_Dataset_Binary.csv's layout (comment;isHate), n distinct rows, half hateful."""
    d.mkdir(parents=True, exist_ok=True)
    rows = [f"{(HATE if i % 2 else FINE)[i % 3]} {i};{1.0 if i % 2 else 0.0}" for i in range(n)]
    (d / "Ethos_Dataset_Binary.csv").write_text("comment;isHate\n" + "\n".join(rows) + "\n")
    return d


@pytest.mark.slow
def test_first_fit_on_a_tiny_model(tmp_path):
    data = synthetic_ethos(tmp_path / "ethos")
    out = tmp_path / "results" / "first_fit.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "first_fit.py"), "--model", "random:tiny_gemma3",
                        "--data-dir", str(data), "--rows", "16", "--epochs", "2", "--skip-aot", "--matmul-n", "256",
                        "--cache-min-compile-seconds", "0", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r == json.loads(p.stdout)  # printed and written: the same document
    assert not [q for q in out.parent.iterdir() if q.name.startswith(".")]  # the atomic write left no temp file
    assert r["matmul_peak_gflops"] > 0

    cold, warm = r["cold"], r["warm"]
    for run in (cold, warm):
        assert run["train_rows"] == 16 and run["test_rows"] == 40 and len(run["history"]) == 2
        assert run["fit_s"] > 0 and run["score_s"] > 0 and abs(run["total_s"] - (run["fit_s"] + run["score_s"])) <= 0.002
        assert run["process_s"] > run["total_s"]
        assert 0.0 <= run["test_roc_auc"] <= 1.0
        c = run["compiles"]
        assert c["programs"] == len(c["each"]) == c["compiled"] + c["cache_hits"] > 0
        assert {"fit", "score"} <= set(c["by_phase"])  # the train step compiles in fit, the scorer in score
        assert all(e["seconds"] >= 0 and e["phase"] in ("setup", "fit", "score") for e in c["each"])
    assert cold["compiles"]["cache_hits"] == 0 and cold["compiles"]["compiled"] > 0  # an empty cache
    assert cold["compiles"]["compile_s"] > 0 and cold["compiles"]["by_phase"]["fit"]["compiled"] > 0
    assert r["cache_after_cold"]["files"] > 0
    assert warm["compiles"]["cache_hits"] > 0  # the second process read what the first compiled
    assert any(e["cache_hit"] and e["phase"] == "fit" for e in warm["compiles"]["each"])

    steady = r["steady_train"]
    assert steady["gflops"] > 0 and steady["tokens_per_s"] > 0 and steady["epochs"] == [2]
    assert abs(steady["fraction_of_matmul_peak"] - steady["gflops"] / r["matmul_peak_gflops"]) < 1e-3

    assert r["aot_train_step"] is None  # --skip-aot


@pytest.mark.slow
def test_aot_compile_of_a_block_scanned_gemma4(tmp_path):
    """`--aot-only` on the 31B-like tiny Gemma 4: two blocks of three layer types scanned, so
    the scanned step's program is smaller than the unrolled one's."""
    out = tmp_path / "aot.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "first_fit.py"), "--aot-only",
                        "--aot-model", "tiny_gemma4_global", "--aot-batch", "2", "--aot-length", "16", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r == json.loads(p.stdout) and "cold" not in r
    a = r["aot_train_step"]
    assert a["model"] == "tiny_gemma4_global"
    for key, scan in (("scanned", True), ("unrolled", False)):
        assert a[key]["scan_layers"] is scan and a[key]["compile_s"] > 0 and a[key]["lower_s"] > 0
        assert a[key]["num_layers"] == 6 and a[key]["batch"] == [2, 16]
    assert a["scanned"]["hlo_text_chars"] < 0.75 * a["unrolled"]["hlo_text_chars"]
    assert a["unrolled_over_scanned"] > 0
