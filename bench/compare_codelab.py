"""Our train step and scorer vs the codelab's keras-hub recipe, in one run, same weights.

    python bench/compare_codelab.py [--steps 10] [--score-n 20]

Prints one JSON object. Training is compared at the codelab's own config
(LoRA rank 4 on q/v, batch 2, length 128) and at our default config; scoring
compares our batched, bucketed, class-rows-only scorer with the codelab's
per-example `compute_output_probability`. Compilation is excluded on both
sides (a warm-up pass first). The MFU estimate counts 2 FLOPs per multiply-add
of the non-embedding weights per token (forward), twice that for a train step
(forward + input gradients; frozen weights get no weight gradients), plus
attention scores and values (4 * layers * heads * head_dim * length / 2 per
token, causal), against the peak of a large fp32 matmul measured in the same run.
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

import bench.keras_codelab as kc  # noqa: E402  (sets KERAS_BACKEND=jax before keras loads)
from toolkit.train.flops import forward_flops_per_token as flops_per_token  # noqa: E402


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        r = f(a)
    r.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def ours_train(texts, labels, *, lora, batch_size, max_length, steps, label_names, instructions, separator):
    import jax
    import jax.numpy as jnp

    from toolkit.config import TrainConfig
    from toolkit.data.pipeline import make_epoch
    from toolkit.data.prompt import PromptEncoder, PromptFormat, class_token_ids
    from toolkit.train.loop import _device_batch, make_optimizer
    from toolkit.train.step import make_train_step, split_model
    from toolkit.weights.loader import load_pretrained

    model, tok = load_pretrained("gemma3_270m", lora=lora, param_dtype="float32", dtype="float32")
    enc = PromptEncoder(PromptFormat(instructions=instructions, separator=separator), label_names, tok, max_length)
    full, _ = enc.encode_all(texts)
    head = enc.head_ids  # the shared instruction head runs once per batch, as AgileClassifier does
    ids = [x[len(head):] for x in full]
    cids = jnp.asarray(class_token_ids(tok, label_names))
    parts = split_model(model)
    tx, _ = make_optimizer(TrainConfig(batch_size=batch_size), 1000)
    step = make_train_step(parts.train_graph, tx, cids, head=jnp.asarray(head))
    lora_s, opt, rest = parts.lora, tx.init(parts.lora), parts.rest

    def run(epoch, limit):
        nonlocal lora_s, opt, rest
        times, toks, padded = [], 0, 0
        for b in make_epoch(ids, labels, batch_size=batch_size, max_length=max_length, epoch=epoch, seed=0):
            if len(times) >= limit:
                break
            t0 = time.perf_counter()
            lora_s, opt, rest, m = step(lora_s, opt, parts.frozen, rest, _device_batch(b))
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
            toks += int(b.lengths.sum()) + len(head) * int(b.weights.sum())  # whole prompts, as keras counts
            padded += b.tokens.size + len(head)  # tokens actually computed
        return times, toks, padded

    run(0, 10**9)  # compile every bucket shape
    times, toks, padded = run(1, steps)
    dt = sum(times)
    mean_len = toks / max(len(times) * batch_size, 1)  # mean whole-prompt length
    return {"seconds_per_step": dt / len(times), "examples_per_s": len(times) * batch_size / dt,
            "tokens_per_s": toks / dt, "padded_tokens_per_s": padded / dt, "steps": len(times),
            "batch_size": batch_size, "mean_real_tokens_per_example": mean_len,
            "head_tokens": len(head),
            "achieved_gflops": 2 * flops_per_token(model.config, mean_len) * padded / dt / 1e9}, (parts, lora_s, ids,
                                                                                               cids, model.config)


def ours_score(parts, lora_s, ids, cids, cfg, *, batch_size, max_length, n, head):
    from toolkit.train.loop import predict_proba

    kw = dict(batch_size=batch_size, max_length=max_length, head=head)
    predict_proba(parts, lora_s, ids[:n], list(np.asarray(cids)), **kw)
    t0 = time.perf_counter()
    probs = predict_proba(parts, lora_s, ids[:n], list(np.asarray(cids)), **kw)
    dt = time.perf_counter() - t0
    mean_len = float(np.mean([len(x) for x in ids[:n]])) + len(head)
    return {"examples_per_s": n / dt, "n": n, "batch_size": batch_size, "head_tokens": len(head),
            "prompt_tokens_per_s": mean_len * n / dt}, probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--score-n", type=int, default=20)
    ap.add_argument("--our-score-n", type=int, default=198)
    ap.add_argument("--skip-keras", action="store_true", help="measure only our side")
    args = ap.parse_args()

    from toolkit.models.lora import LoRAConfig

    train_df, test_df = kc.load_ethos()
    texts, y = train_df["comment"].tolist(), train_df["hateful"].to_numpy()
    out: dict = {"matmul_peak_gflops": matmul_peak_gflops(), "environment": kc.environment()}

    codelab_cfg = dict(lora=LoRAConfig(rank=4, alpha=None, targets=("q", "v")), batch_size=2, max_length=128,
                       label_names=("Positive", "Negative"), instructions=kc.CODELAB_CLASSIFIER.instructions,
                       separator="<separator>")
    ours, (parts, lora_s, _, cids, cfg) = ours_train(texts[:200], y[:200], steps=args.steps * 5, **codelab_cfg)
    out["ours_codelab_config"] = ours
    default_cfg = dict(lora=LoRAConfig(rank=8, alpha=16, targets=("q", "k", "v", "o", "gate", "up", "down")),
                       batch_size=8, max_length=256, label_names=("no", "yes"),
                       instructions="Is the following text hate speech? Answer yes or no", separator="\n")
    out["ours_default_config"], _ = ours_train(texts[:200], y[:200], steps=args.steps * 2, **default_cfg)

    from toolkit.data.prompt import PromptEncoder, PromptFormat
    from toolkit.models.tokenizer import Tokenizer
    from toolkit.weights.gguf import resolve_gguf

    tok = Tokenizer.from_gguf(resolve_gguf("gemma3_270m"))
    enc = PromptEncoder(PromptFormat(instructions=codelab_cfg["instructions"], separator="<separator>"),
                        codelab_cfg["label_names"], tok, 128)
    test_ids, _ = enc.encode_all(test_df["comment"].tolist())
    test_ids = [x[len(enc.head_ids):] for x in test_ids]
    out["ours_score"], our_probs = ours_score(parts, lora_s, test_ids, cids, cfg, batch_size=8, max_length=128,
                                              n=min(args.our_score_n, len(test_ids)), head=enc.head_ids)

    if not args.skip_keras:
        lm, ktok = kc.build_codelab_model()
        out["keras_score"] = kc.score_speed(lm, ktok, test_df["comment"].tolist(), n=args.score_n)
        out["keras_train"] = kc.train_speed(lm, texts, y, batch_size=2, steps=args.steps, warmup_steps=2)
        k = out["keras_train"]
        out["train_speedup_same_config_tokens_per_s"] = ours["tokens_per_s"] / k["tokens_per_s"]
        out["train_speedup_same_config_examples_per_s"] = ours["examples_per_s"] / k["examples_per_s"]
        out["train_speedup_default_config_examples_per_s"] = (out["ours_default_config"]["examples_per_s"]
                                                              / k["examples_per_s"])
        out["score_speedup_examples_per_s"] = out["ours_score"]["examples_per_s"] / out["keras_score"]["examples_per_s"]
        out["keras_score"].pop("probabilities", None)
    for key in ("ours_codelab_config", "ours_default_config"):
        out[key]["mfu_vs_measured_peak"] = out[key]["achieved_gflops"] / out["matmul_peak_gflops"]
        out[key]["mfu_vs_190_gflops"] = out[key]["achieved_gflops"] / 190.0
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
