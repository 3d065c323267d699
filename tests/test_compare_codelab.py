"""bench/compare_codelab.py end to end on a tiny random model and a synthetic ETHOS file: both of
our recipes through AgileClassifier, the keras-hub codelab on the same weights, and the JSON written
atomically. Speeds are not judged, only that each was measured; the untrained probabilities of the
two sides must agree (same weights, same prompt)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_first_fit_bench import synthetic_ethos

from conftest import ROOT



@pytest.mark.slow  # ~100 s of CPU: two of our fits and the keras-hub codelab, each compiling
def test_compare_codelab_on_a_tiny_model(tmp_path):
    data = synthetic_ethos(tmp_path / "ethos")
    out = tmp_path / "results" / "compare_codelab.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_codelab.py"), "--model", "random:tiny_gemma3",
                        "--data-dir", str(data), "--rows", "8", "--epochs", "2", "--steps", "2", "--score-n", "3",
                        "--our-score-n", "8", "--matmul-n", "256", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r == json.loads(p.stdout)
    assert not [q for q in out.parent.iterdir() if q.name.startswith(".")]  # no temp file left

    same, default = r["ours_codelab_config"], r["ours_default_config"]
    assert same["config"]["lora"]["rank"] == 4 and same["config"]["lora"]["targets"] == ["q", "v"]
    assert same["config"]["batch_size"] == 2 and same["config"]["max_length"] == 128
    assert same["labels"] == ["Positive", "Negative"] and default["labels"] == ["no", "yes"]
    assert default["config"]["lora"]["rank"] == 8  # the toolkit's default, not a copy of it
    for run in (same, default):
        assert run["epochs_timed"] == [2] and not run["includes_compile"] and run["steps"] > 0
        assert run["seconds_per_step"] > 0 and run["examples_per_s"] > 0 and run["tokens_per_s"] > 0
        assert run["achieved_gflops"] > 0 and 0 < run["mfu_vs_measured_peak"]
    assert r["ours_score"]["examples_per_s"] > 0 and r["ours_score"]["n"] == 8

    k = r["keras_train"]
    assert k["steps"] == 2 and k["seconds_per_step"] > 0 and r["keras_score"]["n"] == 3
    assert r["train_speedup_same_config_tokens_per_s"] > 0 and r["score_speedup_examples_per_s"] > 0
    agree = r["zero_shot_agreement"]
    assert agree["n"] == 3 and agree["max_abs_diff"] < 1e-4
