"""`agile-predict` on a big file (issue 17): rows/s beside `predict_proba` on the same rows,
and peak memory flat in the number of rows.

    python bench/predict_file.py --rows 10000 100000          # the 270M, ETHOS texts repeated
    python bench/predict_file.py --rows 10000 100000 --proba-max-rows 10000   # predict_proba at 10k only
    python bench/predict_file.py --model random:tiny_gemma3 --rows 200 400 --out -   # what the test runs

For each row count N: a CSV of N ETHOS texts (repeated in order, each with its row
number appended so no two are equal), scored by `toolkit.predict_file` in a fresh
process (its wall time, rows/s and peak RSS from `ru_maxrss`), and by
`AgileClassifier.predict_proba` on the same N texts held in memory, also in a fresh
process. Each child also reports its CPU seconds, so rows per CPU-second stays comparable
when the machine is shared. The classifier is the zero-shot one (untrained adapters score at the same
speed as trained ones); every process compiles its scorer once, included in its time.
Prints one JSON object and writes it atomically to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULT = ROOT / "bench" / "results" / "predict_file.json"


def _texts(n: int) -> list[str]:
    from toolkit.data.sources import load_ethos

    base = load_ethos()["text"].tolist()
    return [f"{base[i % len(base)]} ({i})" for i in range(n)]


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    import pandas as pd

    from toolkit.classifier import AgileClassifier
    from toolkit.predict import predict_file

    clf = AgileClassifier(["no", "yes"], model=args.model, zero_shot=True, progress=False,
                          prompt={"instructions": "Is the following text hate speech? Answer yes or no"})
    clf._ensure_model()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    if args.mode == "predict_file":
        stats = predict_file(clf, args.input, args.output, chunk_rows=args.chunk_rows, progress=False)
        rows = stats.rows
    else:
        texts = pd.read_csv(args.input)["text"].tolist()
        rows = len(clf.predict_proba(texts))
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 2),
            "cpu_seconds": round(cpu, 1), "rows_per_cpu_s": round(rows / cpu, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--proba-max-rows", type=int, default=None,
                    help="run predict_proba only at sizes up to this (it scores the same rows at the same rate; "
                         "on 2 CPU cores 100k rows take ~45 min each way)")
    ap.add_argument("--out", default=str(RESULT), help="JSON path, or - for stdout only")
    ap.add_argument("--mode", choices=("predict_file", "predict_proba"), help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode:  # a child
        print(json.dumps(_child(args)))
        return 0
    import pandas as pd

    results = []
    with tempfile.TemporaryDirectory(prefix="agile-predict-bench-") as tmp:
        for n in args.rows:
            src = Path(tmp) / f"in_{n}.csv"
            pd.DataFrame({"id": range(n), "text": _texts(n)}).to_csv(src, index=False)
            row: dict[str, Any] = {"rows": n, "input_mb": round(src.stat().st_size / 1e6, 2)}
            both = args.proba_max_rows is None or n <= args.proba_max_rows
            for mode in ("predict_file", "predict_proba") if both else ("predict_file",):
                cmd = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--input", str(src),
                       "--output", str(Path(tmp) / f"out_{n}.csv"), "--chunk-rows", str(args.chunk_rows)]
                r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                if r.returncode != 0:
                    raise SystemExit(f"{mode} on {n} rows failed:\n{r.stderr[-3000:]}")
                row[mode] = json.loads(r.stdout.strip().splitlines()[-1])
            results.append(row)
            _emit(args, results)  # after every size, so a long run keeps what it measured
    return 0


def _emit(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    from bench.emit import emit

    out = {"benchmark": "predict_file", "model": args.model, "chunk_rows": args.chunk_rows, "results": results}
    if len(results) >= 2:
        small, big = results[0], results[-1]
        out["peak_rss_ratio_largest_vs_smallest"] = round(
            big["predict_file"]["peak_rss_gb"] / small["predict_file"]["peak_rss_gb"], 3)
    emit(out, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
