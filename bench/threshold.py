"""An operating point chosen on validation rows, checked on the test rows (issue 17).

    python bench/threshold.py                                   # the 270M, ETHOS@200, target precision 0.9
    python bench/threshold.py --model random:tiny_gemma3 --train-size 16 --validation-size 32 \\
        --epochs 1 --metric f1 --out -                          # what the test runs

Fits `sweeps/ethos_270m.yaml`'s classifier (the default recipe) on `--train-size` ETHOS
rows, holds out `--validation-size` other training rows, calls `tune_threshold` on
them (`--target-precision`, or `--metric f1`), and scores the 198 test rows at that
threshold and at the most probable class. Prints one JSON object and writes it
atomically to `--out`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULT = ROOT / "bench" / "results" / "threshold_ethos_200.json"


def _at(m: dict) -> dict:
    pos = m["per_class"][m["positive"]]
    return {"precision": pos["precision"], "recall": pos["recall"], "f1": m["f1"],
            "share_predicted_positive": m["share_predicted_positive"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--train-size", type=int, default=200)
    ap.add_argument("--validation-size", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--target-precision", type=float, default=0.9)
    ap.add_argument("--metric", choices=("f1",), help="choose by F1 instead of a target precision")
    ap.add_argument("--out", default=str(RESULT), help="JSON path, or - for stdout only")
    args = ap.parse_args(argv)

    from toolkit.classifier import AgileClassifier
    from toolkit.config import load_config
    from toolkit.data.datasets import load_splits
    from toolkit.metrics import classification_metrics

    cfg = load_config(ROOT / "sweeps" / "ethos_270m.yaml", [
        f"model.name={args.model}", f"data.train_size={args.train_size}",
        f"data.validation_size={args.validation_size}", f"train.epochs={args.epochs}"])
    train, test, validation = load_splits(cfg.data)
    clf = AgileClassifier.from_config(cfg, progress=False)
    t0 = time.perf_counter()
    clf.fit(train["text"], train["label"])
    fit_s = time.perf_counter() - t0
    target = {"metric": args.metric} if args.metric else {"target_precision": args.target_precision}
    chosen = clf.tune_threshold(validation["text"], validation["label"], **target)
    at_threshold = clf.evaluate(test["text"], test["label"])
    probs = clf.predict_proba(test["text"])
    y = [clf.class_names.index(v) for v in test["label"]]
    at_argmax = classification_metrics(y, probs, clf.class_names)
    out = {"benchmark": "threshold", "model": args.model, "train_rows": len(train),
           "validation_rows": len(validation), "test_rows": len(test), "epochs": args.epochs, "target": target,
           "threshold": chosen["threshold"], "positive": chosen["positive"],
           "validation": {k: chosen[k] for k in ("precision", "recall", "f1")},
           "test_at_threshold": _at(at_threshold), "test_at_argmax": _at(at_argmax),
           "test_roc_auc": at_argmax["roc_auc"], "fit_seconds": round(fit_s, 1)}
    from bench.emit import emit

    emit(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
