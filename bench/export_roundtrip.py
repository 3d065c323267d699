"""The export round trip on the real Gemma 3 270M: train a short LoRA run, export, load in keras-hub.

    python bench/export_roundtrip.py [--train 64] [--n 20]

Trains the 270M on the first `--train` ETHOS training rows (1 epoch, the sweep
files' LoRA), saves the classifier, exports `keras-preset` (adapters merged) and
`lora` (adapters alone; the base written as its own preset beside), then scores
`--n` test texts with keras-hub in a fresh process (`bench/keras_scorer.py`):
Gemma3CausalLM.from_preset(merged), and from_preset(base) + enable_lora +
load_lora_weights. Prints and writes bench/results/export_roundtrip_270m.json
with the largest class-probability difference of each against ours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from toolkit.io_utils import atomic_dir, write_json  # noqa: E402


def keras_scores(spec: dict, tmp: Path) -> dict:
    path = tmp / f"spec_{spec['name']}.json"
    path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "keras_scorer.py"), str(path)], capture_output=True,
                       text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--data-dir", default=None, help="ETHOS csv dir (default: $AGILE_TOOLKIT_DATA/ethos, else the cache, else a download)")
    args = ap.parse_args()

    from toolkit.classifier import AgileClassifier
    from toolkit.data.sources import ethos_split, load_ethos
    from toolkit.export import export
    from toolkit.export.writer import write_keras_preset

    train, test = ethos_split(load_ethos("binary", local_dir=args.data_dir))
    clf = AgileClassifier(("no", "yes"), model="gemma3_270m", param_dtype="float32",
                          prompt={"instructions": "Is the following text hate speech? Answer yes or no"},
                          lora={"rank": 8, "alpha": 16, "targets": ["q", "k", "v", "o", "gate", "up", "down"]},
                          train={"epochs": 1, "batch_size": 8, "learning_rate": 5e-4})
    t0 = time.perf_counter()
    clf.fit(train["text"].iloc[:args.train].tolist(), train["label"].iloc[:args.train].to_numpy())
    fit_s = time.perf_counter() - t0
    # Texts whose prompt is not truncated (the keras side tokenises the whole text).
    texts = [t for t in test["text"].tolist() if not clf.questions.encoders[0].encode(t)[1]][:args.n]
    ours = clf.predict_proba(texts)
    head, tail = clf.prompt_format.head_and_tail(clf.class_names)
    common = {"head": head, "tail": tail, "texts": texts, "class_words": list(clf.class_names), "task": "Gemma3CausalLM"}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        saved = clf.save(tmp / "classifier")
        t0 = time.perf_counter()
        merged = export(saved, tmp / "keras_preset", format="keras-preset")
        lora = export(saved, tmp / "lora", format="lora")
        export_s = time.perf_counter() - t0
        with atomic_dir(tmp / "base") as base:  # the unmerged base the adapters apply to
            write_keras_preset(clf, clf.host_files(), base, merge=False)
        info = json.loads((lora / "lora.json").read_text())
        a = keras_scores({**common, "name": "merged", "preset": str(merged)}, tmp)
        b = keras_scores({**common, "name": "lora", "preset": str(tmp / "base"), "lora": str(lora / "adapters.lora.h5"),
                          "rank": info["rank"], "target_layer_names": info["keras_target_layer_names"]}, tmp)
        sizes = {p.name: round(p.stat().st_size / 1e6, 1) for p in (merged / "model.weights.h5",
                                                                    lora / "adapters.lora.h5")}
    same_tokens = a["prompt_ids"] == [clf.questions.encoders[0].encode(t)[0] for t in texts]
    result = {
        "benchmark": "export_roundtrip", "model": "gemma3_270m (GGUF, fp32)", "train_rows": args.train,
        "texts": len(texts), "fit_seconds": round(fit_s, 1), "export_seconds": round(export_s, 1),
        "same_prompt_tokens": same_tokens, "file_mb": sizes,
        "keras_preset": {"task": a["task"], "max_abs_diff": float(np.abs(np.array(a["probs"]) - ours).max()),
                         "seconds": round(a["seconds"], 1)},
        "lora_enable_lora_load_lora_weights": {
            "max_abs_diff": float(np.abs(np.array(b["probs"]) - ours).max()), "seconds": round(b["seconds"], 1)},
        "ours_p_yes": np.round(ours[:, 1], 4).tolist(),
    }
    print(json.dumps(result, indent=1))
    write_json(ROOT / "bench" / "results" / "export_roundtrip_270m.json", result)


if __name__ == "__main__":
    main()
