"""bench/active_learning.py runs on a tiny random model, so a change to suggest or fit cannot break it silently."""

import json

import pytest

from conftest import needs_ethos, run_bench


@needs_ethos
@pytest.mark.slow
def test_active_learning_bench_runs_every_strategy_and_round(tmp_path):
    out = tmp_path / "al.json"
    r = run_bench("active_learning", "--model", "random:tiny_gemma3",
                  "--start", "8", "--step", "8", "--max", "16", "--seeds", "0", "--epochs", "1", "--pool-size", "120",
                  "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["pool"] == 120 and res["test_rows"] == 198
    assert sorted(run["strategy"] for run in res["runs"]) == ["diverse", "random", "uncertainty"]
    for run in res["runs"]:
        assert [p["labels"] for p in run["rounds"]] == [8, 16]
        assert 0 <= run["rounds"][-1]["roc_auc"] <= 1 and run["rounds"][0]["suggest_seconds"] >= 0
    assert set(res["table"]) == {"diverse", "random", "uncertainty"} and set(res["table"]["random"]) == {"8", "16"}
    assert "labels_to_match_random_200" in res and res["labels_to_match_random_200"] is None  # no 200 here
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # Each round from the last round's adapters: one classifier refits (agile-train --continue).
    warm = tmp_path / "warm.json"
    r = run_bench("active_learning", "--model", "random:tiny_gemma3", "--strategies", "uncertainty", "--warm-start",
                  "--start", "8", "--step", "8", "--max", "16", "--seeds", "0", "--epochs", "1", "--pool-size", "120",
                  "--out", str(warm))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(warm.read_text())
    assert res["warm_start"] is True and [p["labels"] for p in res["runs"][0]["rounds"]] == [8, 16]
