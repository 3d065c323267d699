"""TF-IDF + logistic regression on the ETHOS codelab split: the bar a Gemma recipe must clear.

    python bench/tfidf_baseline.py [--data-dir DIR] [--sizes 200 400 800] [--seeds 0 1 2]

Prints JSON. Data: `load_ethos("binary")` + `ethos_split` (hateful = isHate >=
median, shuffle random_state=32, 800 train / 198 test), positive class = hateful (1).

Two variants per training size n:
- "codelab_first_n": the first n rows of the shuffled train part, as the codelab
  takes its 200/400/800 subsets. The seed is only LogisticRegression's
  random_state, and lbfgs on this convex problem does not use it, so the std
  over seeds is 0 by construction: it is one number, not an estimate of spread.
- "random_n" (skipped at n = 800, where it equals the full train part): n rows
  drawn without replacement with the seed, which shows how much the result
  depends on which few hundred comments happen to be labelled.

Models: TfidfVectorizer with defaults (lowercase, word unigrams, token pattern
\\b\\w\\w+\\b, l2 norm, smooth idf), and the same with ngram_range=(1, 2)
(the setting that reproduces the reference figure F1 0.705 / ROC-AUC 0.602 at
200 examples), each + LogisticRegression(C=1.0, lbfgs, max_iter=1000,
random_state=seed); the vectorizer is fit on the training rows only. Metrics on
the 198 test rows via sklearn.metrics: F1 and accuracy from predict() (threshold
0.5), ROC-AUC and PR-AUC (average precision) from predict_proba()[:, 1].
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn import metrics
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from toolkit.data.sources import ethos_split, load_ethos, take_subset  # noqa: E402

METRICS = ("f1", "roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "share_predicted_positive", "wall_s")


VECTORIZERS: dict[str, dict[str, Any]] = {
    "tfidf_unigram_default": {},
    "tfidf_ngram_1_2": {"ngram_range": (1, 2)},
}


def evaluate(train: pd.DataFrame, test: pd.DataFrame, seed: int, vectorizer: dict[str, Any]) -> dict[str, float]:
    """Fit on `train`, score the test rows; wall time covers fit + predict."""
    t0 = time.perf_counter()
    model = make_pipeline(TfidfVectorizer(**vectorizer), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(train["text"], train["label"])
    y_prob = model.predict_proba(test["text"])[:, list(model.classes_).index(1)]
    y_pred = model.predict(test["text"])
    wall = time.perf_counter() - t0
    y_true = test["label"].to_numpy()
    return {
        "f1": metrics.f1_score(y_true, y_pred, pos_label=1),
        "roc_auc": metrics.roc_auc_score(y_true, y_prob),
        "pr_auc": metrics.average_precision_score(y_true, y_prob),
        "accuracy": metrics.accuracy_score(y_true, y_pred),
        "balanced_accuracy": metrics.balanced_accuracy_score(y_true, y_pred),
        "share_predicted_positive": float(np.mean(y_pred == 1)),
        "wall_s": wall,
    }


def summarise(runs: list[dict[str, float]], seeds: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in METRICS:
        values = np.array([r[key] for r in runs], dtype=float)
        out[key] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4),
                    "per_seed": dict(zip(map(str, seeds), np.round(values, 4).tolist()))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None,
                    help="directory holding Ethos_Dataset_Binary.csv (default: $AGILE_TOOLKIT_DATA/ethos, else the cache, else a download)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 800])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()

    train, test = ethos_split(load_ethos("binary", local_dir=args.data_dir))
    results: dict[str, Any] = {}
    for name, vectorizer in VECTORIZERS.items():
        first_n, random_n = {}, {}
        for n in args.sizes:
            first_n[str(n)] = summarise(
                [evaluate(take_subset(train, n), test, s, vectorizer) for s in args.seeds], args.seeds)
            if n < len(train):
                random_n[str(n)] = summarise(
                    [evaluate(train.sample(n=n, random_state=s), test, s, vectorizer) for s in args.seeds], args.seeds)
        results[name] = {"vectorizer": f"TfidfVectorizer({', '.join(f'{k}={v}' for k, v in vectorizer.items())})",
                         "codelab_first_n": first_n, "random_n": random_n}
    print(json.dumps({
        "benchmark": "tfidf_baseline",
        "data": {"train_rows": len(train), "test_rows": len(test), "test_positive": int(test["label"].sum()),
                 "split": "ethos_split: sample(frac=1, random_state=32), first 800 train"},
        "classifier": "LogisticRegression(C=1.0, solver='lbfgs', max_iter=1000, random_state=seed)",
        "positive_class": "hateful (label 1)",
        "seeds": args.seeds,
        "results": results,
        "env": {"python": platform.python_version(), "sklearn": sklearn.__version__, "pandas": pd.__version__,
                "numpy": np.__version__},
    }, indent=1))


if __name__ == "__main__":
    main()
