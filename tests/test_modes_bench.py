"""bench/modes.py runs on a tiny random model, so a change to any mode cannot break it silently."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, needs_ethos, subprocess_env


@needs_ethos
@pytest.mark.slow
def test_modes_bench_fits_each_mode_and_bills_its_memory(tmp_path):
    out = tmp_path / "modes.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "modes.py"), "--model", "random:tiny_gemma3",
                        "--rows", "24", "--epochs", "1", "--seeds", "0", "--modes", "lora+int4", "head",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=900, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = {row["mode"]: row for row in res["table"]}
    assert list(rows) == ["lora+int4", "head"]  # two fresh processes: the quantized base and the head
    for row in rows.values():
        assert 0 <= row["roc_auc"] <= 1 and row["fit_s"] > 0 and row["peak_rss_gb"] > 0.1
    lora, head = rows["lora+int4"], rows["head"]
    # AdamW keeps two fp32 moments per trainable weight.
    assert lora["optimizer_state_bytes"] >= 2 * 4 * lora["trainable_params"]
    assert head["trainable_params"] == 2 * 32  # two classes x tiny_gemma3's embed_dim
    assert lora["frozen_base_bytes"] <= 0.17 * head["frozen_base_bytes"]  # int4 vs the head's float base
    assert "| lora+int4 |" in res["markdown"]
