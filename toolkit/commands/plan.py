"""Plan a run's memory per device before running it: frozen base, trainable weights,
optimizer state, gradients and activations, and whether it fits a 16 / 80 / 141 GB device.

    python launch/plan.py --model gemma_7b --mode lora --base-quant int4 --batch 8 --length 512 --mesh 1,4,2
    python launch/plan.py --model gemma_2b --mode lora full head --base-quant none int8 int4 --mesh 1,1,1 1,4,2

Every combination of the listed modes, quantizations and meshes is one line (and one
JSON object with --json). Activations come from compiling the real train step for the
mesh on this machine's CPU (fake devices), which takes seconds to a few minutes for
a 7B; --no-compile leaves them out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

from toolkit import cli
from toolkit.models.quant import MODES as QUANT_MODES
from toolkit.plan import MODES  # no JAX at import: XLA_FLAGS are set below, before it starts
from toolkit.xla_env import force_host_devices


def _mesh(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--mesh {text!r}: give data,fsdp,tensor sizes, e.g. 1,4,2")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma_7b", help="a named architecture (toolkit/models/configs.py)")
    ap.add_argument("--mode", nargs="+", default=["lora"], choices=MODES)
    ap.add_argument("--base-quant", nargs="+", default=["none"], choices=QUANT_MODES)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--mesh", type=_mesh, nargs="+", default=[(1, 1, 1)], help="data,fsdp,tensor sizes")
    ap.add_argument("--param-dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--remat", default="dots", choices=("none", "dots", "full"))
    ap.add_argument("--no-compile", action="store_true", help="skip the activations (no AOT compile)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per line instead")
    args = ap.parse_args(argv)
    need = max(math.prod(m) for m in args.mesh)
    if "jax" not in __import__("sys").modules:  # fake CPU devices for the mesh, before JAX starts
        force_host_devices(need)
    from toolkit.config import ConfigError
    from toolkit.models.configs import named_configs
    from toolkit.plan import describe, plan

    if args.model not in named_configs():
        raise ConfigError(f"--model {args.model!r} is not a named architecture; one of {', '.join(named_configs())}")
    for mode, quant, mesh in itertools.product(args.mode, args.base_quant, args.mesh):
        if mode == "full" and quant != "none":
            continue  # a quantized base cannot train
        p = plan(args.model, mode=mode, base_quant=quant, batch=args.batch, length=args.length, mesh=mesh,
                 param_dtype=args.param_dtype, dtype=args.param_dtype, remat=args.remat,
                 compile=not args.no_compile)
        print(json.dumps(p) if args.json else describe(p), flush=True)
    return 0


entry = cli.script(main)  # the `agile-plan` console script


if __name__ == "__main__":
    entry()
