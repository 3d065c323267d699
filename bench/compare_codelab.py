"""Our classifier vs the codelab's keras-hub recipe, in one run, same weights.

    python bench/compare_codelab.py [--rows 200] [--epochs 2] [--steps 10] [--score-n 20]

Prints one JSON object and writes it atomically to `--out`
(default bench/results/compare_codelab.json).

Ours goes through the public API, as a user runs it: `AgileClassifier.fit` on
the first `--rows` ETHOS training rows for `--epochs` epochs, twice: with the
codelab's recipe in this toolkit (`bench/recipe_search.py`'s `codelab`: LoRA rank
4 on q/v, batch 2, length 128, full-vocabulary loss, the generic instruction with
Positive/Negative and the literal `<separator>`) and with our default recipe. Its
training speed is that of the epochs after the first (the first one compiles):
seconds per step, examples/s, real tokens/s (the prompt's shared head counted
once per example, as keras counts whole strings) and the real-token train
FLOP/s of `toolkit.train.flops` against the peak of a large fp32 matmul
measured in the same run (`bench/matmul_peak.py`; given to the fit as
`train.peak_tflops`, so the history's `mfu` is relative to it). Scoring:
`predict_proba` on the test rows, timed on a second call (the first compiles).

The keras side is `bench/keras_codelab.py` on the same base weights: its
per-example `compute_output_probability` (eager, as the codelab) on `--score-n`
test texts while LoRA B is still zero, then `--steps` timed `fit` steps after 2
warm-up steps. `zero_shot_agreement` compares those untrained keras
probabilities with our untrained classifier's on the same texts and the same
prompt (texts whose prompt keras did not truncate): a check that both sides run
the same model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.keras_codelab as kc  # noqa: E402  (sets KERAS_BACKEND=jax before keras loads)
from bench.matmul_peak import matmul_peak_gflops  # noqa: E402
from bench.recipe_search import RECIPES, classifier_kwargs  # noqa: E402

RESULT = ROOT / "bench" / "results" / "compare_codelab.json"
# ETHOS as the codelab phrases it: index = the `hateful` value (recipe_search's task).
TASK = {"labels": ("no", "yes"), "question": "Is the following text hate speech? Answer yes or no",
        "codelab_labels": kc.CLASS_LABELS}


def steady_train(history: list[dict[str, Any]], rows: int, peak_gflops: float) -> dict[str, Any]:
    """Speed over the epochs after the first (which compiles)."""
    steps = [h["step"] - (history[i - 1]["step"] if i else 0) for i, h in enumerate(history)]
    idx = list(range(1, len(history))) or [0]
    secs = sum(history[i]["epoch_seconds"] for i in idx)
    n_steps = sum(steps[i] for i in idx)
    tokens = sum(history[i]["tokens_per_s"] * history[i]["epoch_seconds"] for i in idx)
    mfus = [history[i]["mfu"] for i in idx]
    gflops = (sum(m * peak_gflops * history[i]["epoch_seconds"] for m, i in zip(mfus, idx)) / secs
              if None not in mfus else None)
    return {"epochs_timed": [history[i]["epoch"] for i in idx], "includes_compile": len(history) == 1,
            "seconds_per_step": secs / n_steps, "steps": n_steps, "examples_per_s": rows * len(idx) / secs,
            "tokens_per_s": tokens / secs, "achieved_gflops": gflops,
            "mfu_vs_measured_peak": gflops / peak_gflops if gflops is not None else None,
            "first_epoch_s": history[0]["epoch_seconds"], "train_loss": [h["train_loss"] for h in history]}


def ours(recipe: str, base: Any, texts: list[str], y: np.ndarray, test_texts: list[str], *, epochs: int,
         peak_gflops: float) -> tuple[dict[str, Any], Any]:
    from toolkit.classifier import AgileClassifier

    labels, kw = classifier_kwargs(recipe, TASK, len(texts))
    kw["train"] = {**kw.get("train", {}), "epochs": epochs, "peak_tflops": peak_gflops / 1e3,
                   "eval_every_epoch": False}
    clf = AgileClassifier(labels, model=base, progress=False, **kw)
    t0 = time.perf_counter()
    clf.fit(texts, y)
    out = steady_train(clf.history, len(texts), peak_gflops)
    out |= {"fit_s": time.perf_counter() - t0, "rows": len(texts), "labels": list(labels),
            "config": {"lora": vars(clf.lora_config) | {"targets": list(clf.lora_config.targets)},
                       "batch_size": clf.train_config.batch_size, "max_length": clf.max_length,
                       "loss": clf.train_config.loss, "packing": clf.train_config.packing,
                       "learning_rate": clf.train_config.learning_rate}}
    t0 = time.perf_counter()
    clf.predict_proba(test_texts)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf.predict_proba(test_texts)
    dt = time.perf_counter() - t0
    out["score"] = {"examples_per_s": len(test_texts) / dt, "n": len(test_texts), "first_call_s": first,
                    "batch_size": clf.train_config.eval_batch_size}
    return out, clf


def zero_shot_agreement(base: Any, keras_score: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """Our untrained classifier (codelab phrasing, length 128) vs the untrained keras probabilities."""
    from toolkit.classifier import AgileClassifier

    labels, kw = classifier_kwargs("codelab", TASK, 1)
    kw.pop("train", None)
    kw.pop("lora", None)
    clf = AgileClassifier(labels, model=base, progress=False, zero_shot=True, **kw)
    keep = [i for i, t in enumerate(keras_score["prompt_tokens"]) if t <= keras_score["sequence_length"] - 1]
    if not keep:
        return {"n": 0, "max_abs_diff": None, "reason": "every prompt was truncated by keras"}
    probs = clf.predict_proba([texts[i] for i in keep])
    theirs = np.asarray(keras_score["probabilities"])[keep]
    return {"n": len(keep), "max_abs_diff": float(np.abs(probs - theirs).max())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--data-dir", type=Path, default=kc.ETHOS_DIR)
    ap.add_argument("--rows", type=int, default=200, help="training rows for our fits")
    ap.add_argument("--epochs", type=int, default=2, help="our fits: the first compiles, the rest are timed")
    ap.add_argument("--steps", type=int, default=10, help="timed keras fit steps")
    ap.add_argument("--score-n", type=int, default=20, help="texts keras scores one at a time")
    ap.add_argument("--our-score-n", type=int, default=198, help="texts we score (batched)")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--skip-keras", action="store_true", help="measure only our side")
    ap.add_argument("--out", type=Path, default=RESULT, help="where the JSON goes ('-' = stdout only)")
    args = ap.parse_args(argv)

    from toolkit.io_utils import write_json
    from toolkit.models.configs import Runtime
    from toolkit.weights.loader import load_pretrained

    train_df, test_df = kc.load_ethos(args.data_dir)
    texts = train_df["comment"].tolist()[:args.rows]
    y = train_df["hateful"].to_numpy()[:args.rows]
    test_texts = test_df["comment"].tolist()[:args.our_score_n]
    peak = matmul_peak_gflops(args.matmul_n)
    out: dict[str, Any] = {"benchmark": "compare_codelab", "model": args.model, "rows": args.rows,
                           "epochs": args.epochs, "matmul_peak_gflops": peak, "environment": kc.environment()}

    base = load_pretrained(args.model, lora=None, runtime=Runtime(param_dtype="float32", dtype="float32"))
    assert RECIPES["codelab"]["lora"]["rank"] == 4  # the codelab's enable_lora(rank=4)
    out["ours_codelab_config"], _ = ours("codelab", base, texts, y, test_texts, epochs=args.epochs,
                                         peak_gflops=peak)
    out["ours_default_config"], _ = ours("default", base, texts, y, test_texts, epochs=args.epochs,
                                         peak_gflops=peak)
    out["ours_score"] = out["ours_default_config"].pop("score")
    out["ours_codelab_config"]["score"] = out["ours_codelab_config"].pop("score")

    if not args.skip_keras:
        lm, ktok = kc.build_codelab_model(args.model)
        keras_texts = test_df["comment"].tolist()
        k_score = kc.score_speed(lm, ktok, keras_texts, n=args.score_n)
        out["zero_shot_agreement"] = zero_shot_agreement(base, k_score, keras_texts[:k_score["n"]])
        k_score.pop("probabilities", None)
        k_score.pop("prompt_tokens", None)
        out["keras_score"] = k_score
        out["keras_train"] = kt = kc.train_speed(lm, train_df["comment"].tolist(), list(train_df["hateful"]),
                                                 batch_size=2, steps=args.steps, warmup_steps=2)
        kt.pop("step_times_s", None)
        same = out["ours_codelab_config"]
        out["train_speedup_same_config_tokens_per_s"] = same["tokens_per_s"] / kt["tokens_per_s"]
        out["train_speedup_same_config_examples_per_s"] = same["examples_per_s"] / kt["examples_per_s"]
        out["train_speedup_default_config_examples_per_s"] = (out["ours_default_config"]["examples_per_s"]
                                                              / kt["examples_per_s"])
        out["score_speedup_examples_per_s"] = out["ours_score"]["examples_per_s"] / k_score["examples_per_s"]
    print(json.dumps(out, indent=1, default=float))
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
