"""TF-IDF + logistic regression on the ETHOS codelab split: the bar a Gemma recipe must clear.

    python bench/tfidf_baseline.py [--data-dir ../shared/data/ethos]

Prints JSON: test F1 / ROC-AUC / PR-AUC / accuracy / balanced accuracy / share
predicted positive at 200, 400 and 800 training examples (the first N rows of
the shuffled train part, as the codelab takes them). Seeds 0-2 only change the
solver's random state, so the std is ~0 by construction; `--random-subsets`
instead draws a random N-row subset per seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.data.sources import ethos_split, load_ethos, take_subset  # noqa: E402
from toolkit.metrics import classification_metrics  # noqa: E402

KEYS = ("f1", "roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "share_predicted_positive")


def run(train, test, seed: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t0 = time.perf_counter()
    clf = make_pipeline(TfidfVectorizer(), LogisticRegression(random_state=seed, max_iter=1000))
    clf.fit(train["text"], train["label"])
    probs = clf.predict_proba(test["text"])
    m = classification_metrics(test["label"].to_numpy(), probs, ["not hateful", "hateful"])
    return {**{k: m[k] for k in KEYS}, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "ethos"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 800])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--random-subsets", action="store_true")
    args = ap.parse_args()
    train, test = ethos_split(load_ethos(local_dir=args.data_dir))
    out = {"method": "TfidfVectorizer() + LogisticRegression(max_iter=1000)", "test_size": len(test), "results": {}}
    for n in args.sizes:
        runs = []
        for seed in args.seeds:
            sub = train.sample(n=n, random_state=seed) if args.random_subsets else take_subset(train, n)
            runs.append(run(sub, test, seed))
        out["results"][n] = {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs]))}
                             for k in (*KEYS, "wall_s")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
