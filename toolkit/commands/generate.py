"""Print a greedy continuation: the first check that a model loaded correctly.

    python launch/generate.py --model gemma3_270m --prompt "The capital of France is"
"""

from __future__ import annotations

import argparse
import sys
import time

from toolkit import cli
from toolkit.models.sampling import greedy_tokens
from toolkit.models.configs import Runtime
from toolkit.weights.loader import load_pretrained


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3_270m",
                   help="gemma3_270m, a .gguf file, a keras-hub preset dir, or a Kaggle handle / preset name")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--dtype", default="float32", help="activation dtype (float32 or bfloat16)")
    p.add_argument("--param-dtype", default="float32", help="storage dtype of the weights")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    model, tok = load_pretrained(args.model, runtime=Runtime(param_dtype=args.param_dtype, dtype=args.dtype))
    print(f"[loaded {model.config.name} in {time.perf_counter() - t0:.1f}s]", file=sys.stderr)
    ids = tok.encode(args.prompt, add_bos=True)
    stops = [tok.eos_id] + [tok.token_to_id(t) for t in ("<end_of_turn>",) if t in tok.control_tokens]
    t0 = time.perf_counter()
    sys.stdout.write(args.prompt)
    new: list[int] = []
    shown = ""
    for nxt in greedy_tokens(model, ids, args.max_new_tokens, stop_ids=stops):
        new.append(nxt)
        text = tok.decode(new)  # decode the whole tail: byte-fallback pieces join up
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text
    sys.stdout.write("\n")
    dt = time.perf_counter() - t0
    print(f"[{len(new)} tokens in {dt:.1f}s, {len(new) / max(dt, 1e-9):.1f} tok/s]", file=sys.stderr)
    return 0


entry = cli.script(main)  # the `agile-generate` console script


if __name__ == "__main__":
    entry()
