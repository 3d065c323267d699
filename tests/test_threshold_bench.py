"""bench/threshold.py runs on a tiny random model, so a change to thresholds cannot break it silently."""

import json

import pytest

from conftest import needs_ethos, run_bench


@needs_ethos
@pytest.mark.slow
def test_threshold_bench_tunes_on_validation_and_scores_test(tmp_path):
    out = tmp_path / "threshold.json"
    r = run_bench("threshold", "--model", "random:tiny_gemma3",
                  "--train-size", "16", "--validation-size", "32", "--epochs", "1", "--metric", "f1",
                  "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["train_rows"] == 16 and res["validation_rows"] == 32 and res["test_rows"] == 198
    assert 0 < res["threshold"] < 1 and res["positive"] == "yes"
    for part in ("validation", "test_at_threshold", "test_at_argmax"):
        assert 0 <= res[part]["f1"] <= 1, part
