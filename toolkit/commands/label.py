"""One round of the agile loop: the texts of an unlabelled pool most worth labelling next.

    agile-label --config sweeps/ethos_270m.yaml --pool pool.csv --k 50 --out to_label.csv      # round 0: zero-shot
    agile-label --classifier runs/ethos_270m --pool pool.csv --labeled labeled.csv --k 50 --out to_label.csv

Writes --out (CSV, written whole or not at all) with the text, the current prediction and
probabilities, the uncertainty and reason for each pick, and an empty `label` column to
fill in. Append the labelled rows to your training file and train again (`agile-train`
with `data.source` pointing at it). Every suggested text is recorded in --ledger (default
suggested.jsonl beside --out) and never suggested again, nor is any text of --labeled.
"""

from __future__ import annotations

import argparse

from toolkit import cli


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--classifier", help="saved classifier, run, sweep or export dir (the current model)")
    src.add_argument("--config", help="run config: round 0, its model and prompt zero-shot")
    ap.add_argument("--pool", required=True, help="CSV / TSV / JSONL / Parquet file of unlabelled texts")
    ap.add_argument("--k", type=int, default=50, help="how many texts to suggest (default 50)")
    ap.add_argument("--strategy", default="uncertainty", help="uncertainty, entropy, diverse or random")
    ap.add_argument("--out", default="to_label.csv", help="the CSV to write (default to_label.csv)")
    ap.add_argument("--labeled", nargs="*", default=[], help="files of texts already labelled (never suggested)")
    ap.add_argument("--ledger", help="texts suggested in earlier rounds, one JSON string a line "
                                     "(default: suggested.jsonl beside --out)")
    ap.add_argument("--text-column", default="text", help="the text column of --pool and --labeled")
    ap.add_argument("--seed", type=int, default=0, help="for --strategy random")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of --config")
    args = ap.parse_args(argv)

    from toolkit.label_round import label_round

    out = label_round(classifier=args.classifier, config=args.config, overrides=args.overrides, pool=args.pool,
                      k=args.k, strategy=args.strategy, out=args.out, labeled=args.labeled, ledger=args.ledger,
                      text_column=args.text_column, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {out.path} ({out.rows} texts to label; {out.skipped} of the pool already labelled or suggested; "
          f"ledger {out.ledger})")
    return 0


entry = cli.script(main)  # the `agile-label` console script


if __name__ == "__main__":
    entry()
