"""bench/multilabel.py runs on a tiny random model, so a change to multi-label runs cannot break it silently."""

import json

import pytest

from conftest import needs_ethos, run_bench
from toolkit.data.sources import ETHOS_CATEGORIES


@needs_ethos
@pytest.mark.slow
def test_multilabel_bench_scores_both_models_per_category(tmp_path):
    out = tmp_path / "multilabel.json"
    r = run_bench("multilabel", "--model", "random:tiny_gemma3",
                  "--train-size", "48", "--epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["train_rows"] == 48 and res["test_rows"] == 198 and res["categories"] == list(ETHOS_CATEGORIES)
    for model in ("gemma", "tfidf_ovr"):
        assert list(res[model]["per_category"]) == list(ETHOS_CATEGORIES)
        assert 0 <= res[model]["roc_auc_macro"] <= 1
    table = out.with_suffix(".md").read_text()
    assert "| **macro** |" in table and all(f"| {c} |" in table for c in ETHOS_CATEGORIES)
