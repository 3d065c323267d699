"""A simulated annotator (issue 18): does labelling what `suggest` picks beat labelling at random?

    python bench/active_learning.py                               # 270M, ETHOS, 3 strategies x 3 seeds
    python bench/active_learning.py --dataset uci_imdb            # the UCI sentiment sentences
    python bench/active_learning.py --warm-start --strategies uncertainty --seeds 0   # each round from the last
    python bench/active_learning.py --model random:tiny_gemma3 --start 8 --step 8 --max 16 \\
        --seeds 0 --epochs 1 --pool-size 120 --out /tmp/al.json   # what the test runs

The pool is the data set's 800 training rows with their labels hidden; the test rows
score every round. Each (strategy, seed) starts from `--start` random labels (the same
rows, and so the same first fit, for every strategy of a seed), fits a fresh classifier
with the default recipe, scores the test rows, asks `suggest` for `--step` more from the pool (the annotator
then reveals their labels) and repeats up to `--max` labels. Random labelling is the
control. Writes the JSON (every round: labels, test ROC-AUC, balanced accuracy, fit
and pool-scoring seconds; mean and std per strategy and size;
`labels_to_match_random_200`) after each round (a cut-off run keeps what it did),
and the learning-curve PNG beside it. `--warm-start` fits each round from the last
round's adapters (`agile-train --continue`), one classifier per (strategy, seed), and
writes `active_learning_<dataset>_warm.json`: set beside the fresh-start run to see
whether continuing pays.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
TARGET_SIZE = 200  # the random-labelling size the goal is measured against


def summarise(runs: list[dict[str, Any]], target: int = TARGET_SIZE) -> dict[str, Any]:
    """Per strategy and size: mean / std of the test metrics; and the fewest labels at which
    the best non-random strategy's mean ROC-AUC reaches random's mean at `target`."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    for strategy in sorted({r["strategy"] for r in runs}):
        sizes = sorted({p["labels"] for r in runs if r["strategy"] == strategy for p in r["rounds"]})
        table[strategy] = {}
        for n in sizes:
            points = [p for r in runs if r["strategy"] == strategy for p in r["rounds"] if p["labels"] == n]
            auc = np.array([p["roc_auc"] for p in points], float)
            bal = np.array([p["balanced_accuracy"] for p in points], float)
            table[strategy][n] = {"roc_auc_mean": float(auc.mean()), "roc_auc_std": float(auc.std()),
                                  "balanced_accuracy_mean": float(bal.mean()),
                                  "balanced_accuracy_std": float(bal.std()), "runs": len(points)}
    goal = table.get("random", {}).get(target, {}).get("roc_auc_mean")
    match: int | None = None
    best: str | None = None
    if goal is not None:
        for strategy, by_size in table.items():
            if strategy == "random":
                continue
            hit = next((n for n in sorted(by_size) if by_size[n]["roc_auc_mean"] >= goal), None)
            if hit is not None and (match is None or hit < match):
                match, best = hit, strategy
    return {"table": {s: {str(n): v for n, v in t.items()} for s, t in table.items()},
            "random_roc_auc_at_target": goal, "labels_to_match_random_200": match, "matched_by": best}


def plot(summary: dict[str, Any], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=120, layout="constrained")
    for ax, metric, label in zip(fig.subplots(1, 2), ("roc_auc", "balanced_accuracy"),
                                 ("test ROC-AUC", "test balanced accuracy")):
        for strategy, by_size in summary["table"].items():
            n = np.array([int(k) for k in by_size])
            mean = np.array([v[f"{metric}_mean"] for v in by_size.values()])
            std = np.array([v[f"{metric}_std"] for v in by_size.values()])
            ax.plot(n, mean, marker="o", label=strategy)
            ax.fill_between(n, mean - std, mean + std, alpha=0.2)
        if metric == "roc_auc" and summary["random_roc_auc_at_target"] is not None:
            ax.axhline(summary["random_roc_auc_at_target"], color="grey", linestyle="--", linewidth=1,
                       label=f"random @ {TARGET_SIZE}")
        ax.set_xlabel("labelled examples")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ethos", choices=("ethos", "uci_imdb"))
    ap.add_argument("--data-dir", help="the data set's files (ETHOS: default $AGILE_TOOLKIT_DATA/ethos)")
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--strategies", nargs="+", default=["random", "uncertainty", "diverse"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--start", type=int, default=50)
    ap.add_argument("--step", type=int, default=50)
    ap.add_argument("--max", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--pool-size", type=int, help="the first N training rows as the pool (default: all 800)")
    ap.add_argument("--warm-start", action="store_true",
                    help="each round fits from the last round's adapters (agile-train --continue) instead of fresh "
                         "ones; compare with a run without it (default JSON: active_learning_<dataset>_warm.json)")
    ap.add_argument("--out", help="JSON path (default bench/results/active_learning_<dataset>.json)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "bench"))
    from recipe_search import DATASETS

    from toolkit.classifier import AgileClassifier
    from toolkit.io_utils import write_json
    from toolkit.metrics import classification_metrics

    out = Path(args.out) if args.out else RESULTS / f"active_learning_{args.dataset}{'_warm' if args.warm_start else ''}.json"
    train, test, task = DATASETS[args.dataset](args.data_dir)
    train = train.iloc[: args.pool_size] if args.pool_size else train
    names = list(task["labels"])
    pool_texts = train["text"].tolist()
    pool_labels = [names[int(v)] for v in train["label"]]
    y_test = np.array([int(v) for v in test["label"]])
    random_kw = {"param_dtype": "float32"} if args.model.startswith("random:") else {}
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for seed in args.seeds:
        start = [int(i) for i in np.random.default_rng(seed).choice(len(pool_texts), args.start, replace=False)]
        first: tuple[Any, float, dict[str, Any]] | None = None  # every strategy starts from the same fit
        for strategy in args.strategies:
            labelled = list(start)
            run = {"strategy": strategy, "seed": seed, "rounds": []}
            runs.append(run)
            clf = None
            while True:
                if len(labelled) == args.start and first is not None and not args.warm_start:
                    clf, fit_s, m = first
                else:
                    t0 = time.perf_counter()
                    if clf is None or not args.warm_start:  # warm: one classifier refits from its own adapters
                        clf = AgileClassifier(task["labels"], model=args.model, progress=False,
                                              prompt={"instructions": task["question"]},
                                              train={"epochs": args.epochs, "seed": seed},
                                              warm_start=args.warm_start, **random_kw)
                    clf.fit([pool_texts[i] for i in labelled], [pool_labels[i] for i in labelled])
                    fit_s = time.perf_counter() - t0
                    m = classification_metrics(y_test, clf.predict_proba(test["text"].tolist()), names, positive=1)
                    if len(labelled) == args.start:
                        first = (clf, fit_s, m)
                point = {"labels": len(labelled), "roc_auc": m["roc_auc"], "balanced_accuracy": m["balanced_accuracy"],
                         "f1": m["f1"], "fit_seconds": round(fit_s, 1)}
                if len(labelled) < args.max:
                    t0 = time.perf_counter()
                    s = clf.suggest(pool_texts, min(args.step, args.max - len(labelled)), strategy=strategy,
                                    exclude={pool_texts[i] for i in labelled}, seed=seed * 1000 + len(labelled))
                    point["suggest_seconds"] = round(time.perf_counter() - t0, 1)
                    labelled += [int(i) for i in s.indices]
                run["rounds"].append(point)
                print(f"{strategy:12s} seed {seed} labels {point['labels']:4d}: ROC-AUC {m['roc_auc']:.3f} "
                      f"balanced acc {m['balanced_accuracy']:.3f} (fit {fit_s:.0f} s, "
                      f"suggest {point.get('suggest_seconds', 0):.0f} s)", file=sys.stderr, flush=True)
                result = {"benchmark": "active_learning", "dataset": args.dataset, "model": args.model,
                          "warm_start": args.warm_start,
                          "pool": len(pool_texts), "test_rows": len(test), "start": args.start, "step": args.step,
                          "max": args.max, "epochs": args.epochs, "runs": runs, **summarise(runs)}
                write_json(out, result)
                if point["labels"] >= args.max:
                    break
    plot(result, out.with_suffix(".png"), f"{args.dataset}: labelling what suggest picks vs at random "
                                          f"({args.model}, {len(args.seeds)} seed(s))")
    print({k: result[k] for k in ("random_roc_auc_at_target", "labels_to_match_random_200", "matched_by")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
