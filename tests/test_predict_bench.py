"""bench/predict_file.py runs on a tiny random model, so a change to predict cannot break it silently."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, needs_ethos, subprocess_env


@needs_ethos
@pytest.mark.slow
def test_predict_bench_scores_with_predict_file_and_predict_proba(tmp_path):
    out = tmp_path / "predict.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "predict_file.py"), "--model", "random:tiny_gemma3",
                        "--rows", "60", "--chunk-rows", "50", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [x["rows"] for x in res["results"]] == [60]  # one size here: two fresh processes, not four
    for x in res["results"]:
        for mode in ("predict_file", "predict_proba"):
            assert x[mode]["rows"] == x["rows"] and x[mode]["rows_per_s"] > 0 and x[mode]["peak_rss_gb"] > 0.1
            assert x[mode]["cpu_seconds"] > 0 and x[mode]["rows_per_cpu_s"] > 0
