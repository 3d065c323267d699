"""Compare model sizes across a sweep: F1 / ROC-AUC against training-set size, best
F1 per size, step time and tokens/s, peak memory and device-hours.

    python launch/report.py --sweep runs/quickstart            # offline: runs/quickstart/report/report.html
    python launch/report.py --sweep my-team/agile-toolkit/ethos_2b_vs_7b   # W&B Report (online)

A local sweep directory gives a self-contained HTML page with the PNG plots
(add --wandb to also save a W&B Report of the same runs); a W&B path
entity/project[/group] builds the W&B Report from the runs W&B holds.
"""

from __future__ import annotations

import argparse

from toolkit import cli
from toolkit.report import make_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", required=True, help="a sweep directory, or a W&B path entity/project[/group]")
    ap.add_argument("--out", default=None, help="report directory (default: <sweep>/report)")
    ap.add_argument("--price", type=float, default=None, help="price per device-hour, adds a cost column")
    ap.add_argument("--wandb", action="store_true", help="also save a W&B Report for a local sweep")
    args = ap.parse_args(argv)
    out = make_report(args.sweep, args.out, price_per_device_hour=args.price, wandb_report=args.wandb or None)
    print(f"report of {out['trials']} trials: {out['html']}")
    if out["wandb_url"]:
        print(f"W&B report: {out['wandb_url']}")
    return 0


entry = cli.script(main)  # the `agile-report` console script


if __name__ == "__main__":
    entry()
