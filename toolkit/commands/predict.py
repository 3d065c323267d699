"""Score a file of texts with a trained classifier.

    python launch/predict.py --classifier runs/ethos_270m --input new.csv --output scored.csv
    python launch/predict.py --classifier runs/quickstart --input big.parquet --output scored.parquet --resume

--classifier takes a saved classifier, a run directory, a sweep directory (its best
trial) or a keras-preset / hf export. The output holds every input column, p_<class> per
class and `predicted`, in the format of its suffix (.csv .tsv .jsonl .parquet). It is
streamed in chunks (memory stays flat), appears only when complete, and --resume
continues a killed run from its last finished chunk.
"""

from __future__ import annotations

import argparse

from toolkit import cli


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", required=True, help="saved classifier, run, sweep, or keras-preset / hf export dir")
    ap.add_argument("--input", required=True, help="CSV / TSV / JSONL / Parquet file of texts")
    ap.add_argument("--output", required=True, help="where to write (its suffix picks the format)")
    ap.add_argument("--text-column", default="text", help="the input column holding the texts (default: text)")
    ap.add_argument("--chunk-rows", type=int, default=4096, help="rows scored and written at a time")
    ap.add_argument("--delimiter", default=None, help="CSV/TSV delimiter, if not the format's own")
    ap.add_argument("--resume", action="store_true", help="continue a killed run from its last finished chunk")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    from toolkit.predict import predict_file

    # The path, not a loaded classifier: predict_file checks the input file and the output
    # first, so a bad row fails in a second instead of after loading the model.
    stats = predict_file(args.classifier, args.input, args.output, text_column=args.text_column,
                         chunk_rows=args.chunk_rows, resume=args.resume, overwrite=args.overwrite,
                         delimiter=args.delimiter, progress=not args.quiet)
    print(f"scored {stats.rows} rows with {args.classifier} -> {stats.output} "
          f"({stats.rows_per_s:.1f} rows/s{f'; {stats.resumed_rows} rows from an earlier run' if stats.resumed_rows else ''})")
    return 0


entry = cli.script(main)  # the `agile-predict` console script


if __name__ == "__main__":
    entry()
