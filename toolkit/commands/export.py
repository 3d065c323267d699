"""Export a trained classifier as a keras-hub preset, a transformers checkpoint, or LoRA adapter files.

    python launch/export.py --checkpoint runs/ethos_270m --out exports/ethos_270m
    python launch/export.py --checkpoint runs/quickstart --out exports/adapters --format lora
    python launch/export.py --checkpoint runs/ethos_270m --out exports/hf --format hf   # transformers

--checkpoint takes a saved classifier, a run directory, a sweep directory (its best
trial) or a run's Orbax checkpoints/. The export appears all at once: a failure or
Ctrl-C leaves no directory (or the old one, with --overwrite).
"""

from __future__ import annotations

import argparse

from toolkit import cli
from toolkit.export import FORMATS, export


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="classifier, run, sweep or Orbax checkpoints directory")
    ap.add_argument("--out", required=True, help="the directory to write (must be new or empty); a path or gs://...")
    ap.add_argument("--format", default="keras-preset", choices=FORMATS)
    ap.add_argument("--dtype", default="float32", help="merged weight dtype (keras-preset, hf): float32, bfloat16, float16")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = ap.parse_args(argv)
    out = export(args.checkpoint, args.out, format=args.format, overwrite=args.overwrite, dtype=args.dtype)
    print(f"exported {args.format} to {out}")
    for p in sorted(out.iterdir(), key=lambda p: p.name):  # out may be an object-store URI: one listing
        if p.is_file():
            st = p.stat()  # os.stat_result locally, epath's StatResult on an object store
            print(f"  {p.name}  ({getattr(st, 'st_size', getattr(st, 'length', 0)) / 1e6:.1f} MB)")
    return 0


entry = cli.script(main)  # the `agile-export` console script


if __name__ == "__main__":
    entry()
