"""Model-size reports: the offline HTML page (checked in headless Chromium) and the W&B Report's keys."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, no_temp_files, wandb_records, wandb_summary

QUICKSTART = ROOT / "tests" / "data" / "quickstart_sweep"
PNGS = ("f1_vs_train_size.png", "roc_auc_vs_train_size.png", "best_f1_per_size.png", "best_roc_auc_per_size.png",
        "speed_memory_cost.png")


def _chromium() -> str:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no headless Chromium: install it with `apt-get install chromium-headless-shell` (.ci/run does)")


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch/report.py"), *args], capture_output=True, text=True,
                          timeout=600)


def _browser(html: Path, tmp: Path) -> tuple[dict[str, str], Path]:
    """(attributes of the rendered <body>, screenshot path) from headless Chromium."""
    chrome = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([chrome, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    shot = tmp / "screenshot.png"
    r = subprocess.run([chrome, *flags, "--window-size=1200,2600", f"--screenshot={shot}", html.as_uri()],
                       capture_output=True, text=True, timeout=120, cwd=tmp)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1))), shot


@pytest.mark.slow
def test_quickstart_report_renders_in_headless_chromium(tmp_path):
    sweep = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, sweep)
    r = _report("--sweep", str(sweep), "--price", "0.5")
    assert r.returncode == 0, r.stderr[-3000:]
    out = sweep / "report"
    html = (out / "report.html").read_text()
    for name in PNGS:
        assert (out / name).stat().st_size > 5_000, name
    assert html.count('src="data:image/png;base64,') == len(PNGS)  # self-contained: no file references
    body, shot = _browser(out / "report.html", tmp_path)
    assert body.get("data-images") == str(len(PNGS)) and body.get("data-broken-images") == "0", body
    assert "data-js-errors" not in body
    from matplotlib import image

    pixels = image.imread(shot)
    assert pixels.shape[:2] == (2600, 1200) and pixels[..., :3].std() > 0.05  # not a blank page
    # The numbers on the page are the sweep's: the best trial on validation and its test F1.
    results = json.loads((QUICKSTART / "results.json").read_text())
    best = results["best"]
    assert best["trial"] in html and f"{best['test_f1']:.3f}" in html and f"{best['test_roc_auc']:.3f}" in html
    assert "learning_rate=0.0005" in html and "cost @ 0.5/device-hour" in html


@pytest.mark.slow
def test_report_compares_two_model_sizes_from_a_real_sweep(ci_sweep, tmp_path):
    """The suite's shared real Ray sweep: two (tiny, random) architectures x two training sizes."""
    sweep = ci_sweep.dir
    r = _report("--sweep", str(sweep), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr[-3000:]
    html = (tmp_path / "rep" / "report.html").read_text()
    from toolkit.report.collect import best_per_size, from_sweep_dir

    rows, facts = from_sweep_dir(sweep)
    assert {(r["model"], r["train_size"]) for r in rows} == {
        (m, n) for m in ci_sweep.models for n in ci_sweep.train_sizes} == {
        (m, n) for m in ("random:tiny_gemma3", "random:tiny_gemma") for n in (16, 32)}
    for row in rows:  # what the cost panel shows comes from each trial's own metrics.json
        metrics = json.loads((sweep / "trials" / row["trial"] / "metrics.json").read_text())
        assert row["peak_memory_gb"] == metrics["peak_memory_gb"] > 0.1
        assert row["step_seconds"] > 0 and row["tokens_per_s"] > 0
        assert row["device_hours"] == pytest.approx(metrics["fit_seconds"] / 3600)
        assert row["test_f1"] == pytest.approx(metrics["f1"])
    best = best_per_size(rows, facts["metric"])
    assert len(best) == 4 and html.count("<td>random:tiny_gemma3</td>") >= 3  # best table, cost table, trials
    # The W&B Report plots keys that these runs really log (summary and config), so its panels are not empty.
    from toolkit.report.wandb_report import CONFIG_KEYS, EPOCH_KEYS, SUMMARY_KEYS, build_report

    recs = wandb_records(sweep / "trials" / rows[0]["trial"])
    summary = wandb_summary(recs)
    for key in SUMMARY_KEYS.values():
        assert key in summary, (key, sorted(summary))
    config = yaml.safe_load((sweep / "trials" / rows[0]["trial"] / "config.yaml").read_text())
    for dotted in CONFIG_KEYS.values():
        node = config
        for part in dotted.split("."):
            node = node[part]
        assert node is not None
    history_keys = {k for rec in recs if rec.get("type") == "history" for k in rec["history"]["item"]}
    assert set(EPOCH_KEYS.values()) <= history_keys, sorted(history_keys)
    report = build_report("my-team", "agile-toolkit", ci_sweep.name)
    panels = report.blocks[-1].panels
    assert len(panels) == 9 and report.blocks[-1].runsets[0].filters == f"Metric('Group') == '{ci_sweep.name}'"


@pytest.mark.slow
def test_report_errors_name_the_problem_and_leave_no_half_written_report(tmp_path):
    run = tmp_path / "a_run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    r = _report("--sweep", str(run))
    assert r.returncode == 2 and "no results.json" in r.stderr and "run directory" in r.stderr
    r = _report("--sweep", str(tmp_path / "missing" / "dir"))
    assert r.returncode == 2 and "no such directory" in r.stderr
    r = _report("--sweep", "just-a-name")
    assert r.returncode == 2 and "entity/project" in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(QUICKSTART, broken)
    (broken / "results.json").write_text('{"trials": [')
    r = _report("--sweep", str(broken))
    assert r.returncode == 2 and "results.json: not valid JSON" in r.stderr
    assert not (broken / "report").exists() and no_temp_files(broken)
    # A second report replaces the first as a whole.
    good = tmp_path / "good"
    shutil.copytree(QUICKSTART, good)
    assert _report("--sweep", str(good)).returncode == 0
    (good / "report" / "stale.txt").write_text("old")
    assert _report("--sweep", str(good)).returncode == 0
    assert not (good / "report" / "stale.txt").exists() and (good / "report" / "report.html").is_file()
    assert np.all([p.name in (*PNGS, "report.html") for p in (good / "report").iterdir()])
