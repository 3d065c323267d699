"""Run a Ray Tune sweep: many training runs from one sweep file, early-stopped,
fault-tolerant, each a W&B run, ending in a trial table and the best trial.

    python launch/sweep.py --config sweeps/quickstart.yaml [key=value ...]
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python launch/sweep.py --config sweeps/ethos_2b_vs_7b.yaml

With RAY_ADDRESS set (as `ray job submit` does) it joins that cluster;
otherwise it starts a local Ray on this machine. `resume=true` continues an
interrupted sweep of the same name without redoing finished trials. Overrides
take run keys (`train.epochs=2`) and sweep keys (`sweep.num_samples=4`).
Writes `<output_dir>/<name>/` (see toolkit/sweep/tuner.py). This process never
imports JAX; the trials do, on the Ray workers.
"""

from __future__ import annotations

import argparse
import json

from toolkit import cli
from toolkit.sweep.config import load_sweep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="sweep YAML (see sweeps/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sweep.num_samples=4 train.epochs=2; "
                                                 "resume=true continues an interrupted sweep")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray (default: all)")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after options
    cfg = load_sweep(args.config, args.overrides)
    from toolkit.sweep.tuner import run_sweep

    summary = run_sweep(cfg, resume=cfg.run.resume, num_cpus=args.num_cpus)
    out = cfg.sweep_dir
    print()
    print((out / "results.md").read_text())
    best = summary["best"]
    if best:
        m = cfg.sweep.scheduler.metric
        print(f"best trial: {best['trial']} ({m} {best.get(m)}); run: {best['run_dir']}; "
              f"checkpoint: {best.get('checkpoint')}")
    print(f"wrote {out}/ (results.csv, results.json, results.md, sweep_*.png, trials/)  "
          f"wall {summary['wall_seconds']:.0f}s")
    print(json.dumps({k: summary[k] for k in ("sweep", "best_trial", "wall_seconds", "driver_imported_jax")}))
    failed = [r["trial"] for r in summary["trials"] if r["status"] == "error"]
    return 1 if failed else 0


entry = cli.script(main)  # the `agile-sweep` console script


if __name__ == "__main__":
    entry()
