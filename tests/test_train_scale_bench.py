"""bench/train_scale.py runs on a tiny random model, so a refactor of the step cannot break it silently."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT



@pytest.mark.slow
def test_train_scale_bench_reports_speed_and_memory_on_one_and_two_devices(tmp_path):
    out = tmp_path / "scale.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "train_scale.py"), "--model", "tiny_gemma3", "--random",
                        "--configs", "1:1x1x1,2:2x1x1", "--batch-size", "4", "--length", "16", "--steps", "2",
                        "--peak-tflops", "0.1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [x.get("error") for x in results] == [None, None], results
    one, two = results
    assert one["devices"] == 1 and two["devices"] == 2 and one["model"] == "tiny_gemma3"
    for x in results:
        assert x["tokens_per_step"] == 4 * 16 and x["step_s_median"] > 0 and x["tokens_per_s"] > 0
        assert x["compile_s"] > 0 and x["peak_host_rss_gib"] > 0
    # the same step on the same batch: the mesh changes where it runs, not the loss
    assert abs(one["loss"] - two["loss"]) < 1e-5
