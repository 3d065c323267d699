"""ETHOS's 8 categories as a multi-label task: the 270M beside TF-IDF one-vs-rest (issue 17).

    python bench/multilabel.py                                  # the 270M, 800 training rows
    python bench/multilabel.py --model random:tiny_gemma3 --train-size 48 --epochs 1 --out -   # the test

Fits `sweeps/ethos_multilabel_270m.yaml`'s classifier (one yes/no question per category,
one shared adapter) on the first `--train-size` rows of the codelab's 800, scores the
198 test rows, and fits TF-IDF + logistic regression one-vs-rest on the same rows (a
category with no positive training row gets the constant prior). Prints a per-category
table (F1 at 0.5, ROC-AUC, support) with macro averages, and writes the JSON atomically
to `--out` (default bench/results/multilabel_ethos_800.json) and the table beside it (.md).
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

RESULT = ROOT / "bench" / "results" / "multilabel_ethos_800.json"


def tfidf_one_vs_rest(train_texts: list[str], y_train: np.ndarray, test_texts: list[str], seed: int) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer()
    x_train, x_test = vec.fit_transform(train_texts), vec.transform(test_texts)
    probs = np.empty((len(test_texts), y_train.shape[1]))
    for j in range(y_train.shape[1]):
        if y_train[:, j].min() == y_train[:, j].max():  # one class seen: predict its rate
            probs[:, j] = y_train[:, j].mean()
            continue
        model = LogisticRegression(max_iter=1000, random_state=seed).fit(x_train, y_train[:, j])
        probs[:, j] = model.predict_proba(x_test)[:, 1]
    return probs


def _table(results: dict[str, Any], categories: list[str]) -> str:
    ours, base = results["gemma"], results["tfidf_ovr"]
    lines = ["| category | support (test) | 270M F1 | 270M ROC-AUC | TF-IDF F1 | TF-IDF ROC-AUC |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for c in categories:
        a, b = ours["per_category"][c], base["per_category"][c]
        lines.append(f"| {c} | {a['support']} | {f(a['f1'])} | {f(a['roc_auc'])} | {f(b['f1'])} | {f(b['roc_auc'])} |")
    lines.append(f"| **macro** | | {f(ours['f1_macro'])} | {f(ours['roc_auc_macro'])} | {f(base['f1_macro'])} | "
                 f"{f(base['roc_auc_macro'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--train-size", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULT), help="JSON path, or - for stdout only")
    args = ap.parse_args(argv)

    from toolkit.config import load_config
    from toolkit.data.datasets import category_columns, load_splits
    from toolkit.metrics import multilabel_metrics
    from toolkit.multilabel import MultiLabelClassifier

    overrides = [f"model.name={args.model}", f"data.train_size={args.train_size}", f"train.epochs={args.epochs}",
                 f"train.seed={args.seed}"]
    if args.model.startswith("random:"):
        overrides.append("model.param_dtype=float32")
    cfg = load_config(ROOT / "sweeps" / "ethos_multilabel_270m.yaml", overrides)
    train, test, _ = load_splits(cfg.data)
    categories = category_columns(train)
    y_train, y_test = train[categories].to_numpy(), test[categories].to_numpy()

    clf = MultiLabelClassifier.from_config(cfg, categories=categories, progress=sys.stderr.isatty())
    t0 = time.perf_counter()
    clf.fit(train["text"], y_train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = clf.evaluate(test["text"], y_test)
    score_s = time.perf_counter() - t0
    base = multilabel_metrics(y_test, tfidf_one_vs_rest(train["text"].tolist(), y_train, test["text"].tolist(),
                                                        args.seed), categories)
    keep = ("f1_macro", "roc_auc_macro", "pr_auc_macro", "f1_micro", "per_category")
    results = {"benchmark": "multilabel", "model": args.model, "source": cfg.data.source,
               "train_rows": len(train), "test_rows": len(test), "epochs": args.epochs,
               "prompts_per_epoch": len(train) * len(categories), "categories": categories,
               "train_positives": {c: int(v) for c, v in zip(categories, y_train.sum(axis=0))},
               "gemma": {k: ours[k] for k in keep}, "tfidf_ovr": {k: base[k] for k in keep},
               "fit_seconds": round(fit_s, 1), "score_seconds": round(score_s, 1)}
    table = _table(results, categories)
    from bench.emit import emit

    emit(results, args.out)
    print(table)
    if args.out != "-":
        from toolkit.io_utils import write_text

        write_text(Path(args.out).with_suffix(".md"), f"# {Path(args.out).stem}\n\n"
                   f"`python bench/multilabel.py --model {args.model} --train-size {args.train_size} "
                   f"--epochs {args.epochs}`: {len(train)} training rows, {len(test)} test rows, F1 at 0.5.\n\n"
                   f"{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
