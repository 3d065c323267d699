"""Read an offline W&B run back from disk, through W&B's own reader."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of the one offline run under `run_dir/wandb`, as `wandb leet inspect --json` prints it."""
    (log,) = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    r = subprocess.run(["wandb", "leet", "inspect", "--json", str(log)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rec in recs:
        if rec.get("type") == "summary":
            out.update(rec["summary"].get("update", {}))
    return out


def run_record(recs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(rec["run"] for rec in recs if rec.get("type") == "run")
