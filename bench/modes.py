"""Every way to adapt the model, with its bill (issue 16): one row per mode on ETHOS@N.

    python bench/modes.py                                    # 270M, ETHOS@200, every mode, seeds 0 1 2
    python bench/modes.py --modes lora lora+int8 --seeds 0   # a subset
    python bench/modes.py --model random:tiny_gemma3 --rows 16 --epochs 1 --seeds 0 --out -   # what the test runs

Each (mode, seed) is a fresh process, so its peak RSS (`ru_maxrss`) is its own: the
default recipe (`AgileClassifier(labels, prompt=the question)`) fits the first N
ETHOS training rows (a seeded shuffle of the 800 codelab rows per seed) and scores the
198 test rows. Modes: `lora` (the default), `lora+int8` / `lora+int4` (the frozen base
stored quantized, `base_quant`), `head` (a linear head on the frozen model,
`train.trainable=head`, epochs 30, lr 1e-3, no warm-up), `lora+es` (early stopping
on a 40-row validation split carved from the N rows, patience 1, up to 2x the
epochs), `full` (every weight trains, lr 2e-5). Columns: test ROC-AUC, balanced accuracy and F1 (mean +- std over seeds),
fit seconds, peak RSS, trainable parameters, optimizer-state bytes, frozen-base
bytes. Prints one JSON object, written atomically to `--out` after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULT = ROOT / "bench" / "results" / "modes_ethos_200.json"
QUESTION = "Is the following text hate speech? Answer yes or no"
MODES: dict[str, dict[str, Any]] = {
    "lora": {},
    "lora+int8": {"base_quant": "int8"},
    "lora+int4": {"base_quant": "int4"},
    "head": {"train": {"trainable": "head", "epochs": 30, "learning_rate": 1e-3, "warmup_ratio": 0.0}},
    "lora+es": {"early_stopping": True},
    "full": {"train": {"trainable": "full", "learning_rate": 2e-5}},
}
METRICS = ("roc_auc", "balanced_accuracy", "f1")


def _bytes(tree: Any) -> int:
    """Bytes of a tree of arrays or of their shapes (`jax.eval_shape`)."""
    import math

    import jax
    import numpy as np

    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "shape") and hasattr(x, "dtype")))


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One fit + score in this fresh process."""
    import jax
    import numpy as np

    from toolkit.classifier import AgileClassifier
    from toolkit.data.sources import ethos_split, load_ethos
    from toolkit.train.optim import make_optimizer

    spec = json.loads(json.dumps(MODES[args.mode]))
    early = spec.pop("early_stopping", False)
    train_over = spec.pop("train", {})
    train_df, test_df = ethos_split(load_ethos("binary", local_dir=args.data_dir))
    rows = train_df.sample(frac=1.0, random_state=args.seed).head(args.rows)
    texts, labels = rows["text"].tolist(), rows["label"].tolist()
    train = {"seed": args.seed, **({"epochs": args.epochs} if "epochs" not in train_over else {}), **train_over}
    eval_kw: dict[str, Any] = {}
    if early:
        n_val = max(4, min(40, len(texts) // 5))
        eval_kw = {"eval_texts": texts[:n_val], "eval_labels": labels[:n_val]}
        texts, labels = texts[n_val:], labels[n_val:]
        train.update(epochs=2 * args.epochs, early_stopping={"metric": "eval_roc_auc", "mode": "max", "patience": 1})
    clf = AgileClassifier(("no", "yes"), model=args.model, prompt={"instructions": QUESTION}, train=train,
                          progress=False, **spec)
    t0 = time.perf_counter()
    clf.fit(texts, labels, **eval_kw)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = clf.evaluate(test_df["text"].tolist(), test_df["label"].tolist())
    score_s = time.perf_counter() - t0
    if clf.train_config.trainable == "head":
        trainable = int(np.asarray(clf._head_weights).size)
        tx, _ = make_optimizer(clf.train_config, 1)
        opt_bytes = _bytes(jax.eval_shape(tx.init, jax.ShapeDtypeStruct(np.asarray(clf._head_weights).shape,
                                                                          np.float32)))
    else:
        lora = clf._parts.lora
        trainable = int(sum(x.size for x in jax.tree.leaves(lora)))
        tx, _ = make_optimizer(clf.train_config, 1)
        opt_bytes = _bytes(jax.eval_shape(tx.init, lora))
    kept = clf.history[-1].get("kept_epoch") if clf.history else None
    return {"mode": args.mode, "seed": args.seed, **{k: metrics.get(k) for k in METRICS},
            "fit_s": round(fit_s, 1), "score_s": round(score_s, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "trainable_params": trainable, "optimizer_state_bytes": opt_bytes,
            "frozen_base_bytes": _bytes(clf._parts.frozen), "train_rows": len(texts), "kept_epoch": kept}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import numpy as np

    table = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        rs = [r for r in runs if r["mode"] == mode and "error" not in r]
        if not rs:
            continue
        row: dict[str, Any] = {"mode": mode, "seeds": [r["seed"] for r in rs]}
        for k in (*METRICS, "fit_s", "peak_rss_gb"):
            vals = np.array([r[k] for r in rs if r.get(k) is not None], float)
            row[k] = round(float(vals.mean()), 4) if len(vals) else None
            row[f"{k}_std"] = round(float(vals.std()), 4) if len(vals) > 1 else None
        for k in ("trainable_params", "optimizer_state_bytes", "frozen_base_bytes"):
            row[k] = rs[0][k]
        table.append(row)
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    def pm(row: dict[str, Any], k: str) -> str:
        return "" if row[k] is None else f"{row[k]:.3f}" + (f" ± {row[k + '_std']:.3f}" if row.get(k + "_std") else "")

    lines = ["| mode | ROC-AUC | balanced acc | F1 | fit s | peak RSS GB | trainable params | optimizer bytes | "
             "frozen base bytes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['mode']} | {pm(r, 'roc_auc')} | {pm(r, 'balanced_accuracy')} | {pm(r, 'f1')} | "
                     f"{r['fit_s']:.0f} | {r['peak_rss_gb']:.2f} | {r['trainable_params']:,} | "
                     f"{r['optimizer_state_bytes']:,} | {r['frozen_base_bytes']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-dir", default=None, help="ETHOS csv dir (default: $AGILE_TOOLKIT_DATA/ethos, ...)")
    ap.add_argument("--out", default=str(RESULT), help="JSON path, or - for stdout only")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode:
        print("RESULT " + json.dumps(child(args)))
        return 0
    from bench.emit import emit

    runs: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    for seed in args.seeds:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--mode", mode, "--seed", str(seed), "--model", args.model,
                   "--rows", str(args.rows), "--epochs", str(args.epochs)]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            runs.append(json.loads(line[-1][len("RESULT "):]) if r.returncode == 0 and line else
                        {"mode": mode, "seed": seed, "error": r.stderr[-2000:]})
            table = summarise(runs)
            out = {"benchmark": "modes", "model": args.model, "rows": args.rows, "epochs": args.epochs,
                   "runs": runs, "table": table, "markdown": markdown(table)}
            if args.out != "-":
                from toolkit.io_utils import write_json

                write_json(Path(args.out), out)
    emit(out, "-")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
