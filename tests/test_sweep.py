"""Sweeps on a real Ray: `ray job submit` to a local head (the suite's shared sweep,
tests/conftest.py), a 2-process multilabel JAX trial, and one sweep whose first trial's worker
is killed mid-run and whose driver is interrupted, then resumed (sweeps/ci.yaml: random tiny Gemmas)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, needs_ethos, subprocess_env, wandb_records, wandb_run_record, wandb_summary

pytestmark = [needs_ethos, pytest.mark.slow]


def _sweep(out: Path, *overrides: str) -> list[str]:
    # ETHOS from $AGILE_TOOLKIT_DATA (tests/conftest.py); every worker logs its first rows
    # (tests/agile_test_callbacks.py, on the subprocesses' PYTHONPATH).
    return [sys.executable, str(ROOT / "launch/sweep.py"), "--config", str(ROOT / "sweeps/ci.yaml"),
            f"output_dir={out}", 'callbacks=["agile_test_callbacks:InputLog"]', *overrides]


def _results(out: Path) -> dict:
    return json.loads((out / "ci_sweep" / "results.json").read_text())


def _check_finished_trials(summary: dict, n: int) -> None:
    trials = summary["trials"]
    assert len(trials) == n and all(t["status"] == "finished" for t in trials), trials
    for t in trials:
        for key in ("eval_f1", "eval_roc_auc", "eval_pr_auc", "train_loss", "test_f1", "test_roc_auc"):
            assert t[key] is not None and 0.0 <= t[key] <= (1.0 if key != "train_loss" else 10.0), (key, t)
        metrics = json.loads((Path(t["run_dir"]) / "metrics.json").read_text())
        assert metrics["roc_auc"] == pytest.approx(t["test_roc_auc"])
        assert [h["epoch"] for h in metrics["history"]] == list(range(1, metrics["history"][-1]["epoch"] + 1))
    assert summary["driver_imported_jax"] is False


def test_ray_job_submit_runs_the_ci_sweep_on_a_local_head(ci_sweep):
    job, summary = ci_sweep.job, ci_sweep.summary
    assert "succeeded" in job.stdout.lower()
    assert "best trial:" in job.stdout  # the trial table reaches the submitter
    assert summary["ray"].startswith("cluster at")  # the job joined the head, not an embedded Ray
    _check_finished_trials(summary, len(ci_sweep.models) * len(ci_sweep.train_sizes))
    # Every point of the grid ran as its own trial.
    assert sorted((t["model.name"], t["data.train_size"]) for t in summary["trials"]) == sorted(
        (m, n) for m in ci_sweep.models for n in ci_sweep.train_sizes)
    assert summary["best_trial"] in {t["trial"] for t in summary["trials"]}


def test_the_sweep_writes_its_table_and_plot_and_one_wandb_run_per_trial(ci_sweep):
    out, summary = ci_sweep.dir, ci_sweep.summary
    assert (out / "results.csv").is_file()
    assert (out / "sweep_eval_roc_auc.png").read_bytes()[:4] == b"\x89PNG"
    for t in summary["trials"]:
        recs = wandb_records(Path(t["run_dir"]))
        run = wandb_run_record(recs)
        assert run["run_group"] == ci_sweep.name and run["display_name"] == t["trial"]
        evals = [r["history"]["item"] for r in recs if r.get("type") == "history"]
        assert sum("epoch/eval_f1" in h for h in evals) == t["epochs"]
        s = wandb_summary(recs)
        assert s["test/roc_auc"] == pytest.approx(t["test_roc_auc"])
        assert s["test/f1"] == pytest.approx(t["test_f1"])


@pytest.fixture(scope="module")
def two_process_multilabel(tmp_path_factory) -> dict:
    """One single-trial sweep that is both a 2-process JAX job and a multilabel task (one
    question per category): two behaviours that need a trial of their own, in one trial."""
    tmp = tmp_path_factory.mktemp("two_process_multilabel")
    out = tmp / "runs"
    r = subprocess.run(_sweep(out, "sweep.resources.num_workers=2", "sweep.space={}", "--num-cpus", "3",
                              "data.source=ethos_multilabel", "classifier.task=multilabel",
                              "classifier.categories=[violence, race, religion]", "data.label_names=null"),
                       capture_output=True, text=True, timeout=900, env=subprocess_env(), cwd=tmp)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    summary = _results(out)
    _check_finished_trials(summary, 1)
    return summary


def test_a_trial_runs_as_a_two_process_jax_job(two_process_multilabel):
    run_dir = Path(two_process_multilabel["trials"][0]["run_dir"])
    assert json.loads((run_dir / "metrics.json").read_text())["num_processes"] == 2
    logs = [json.loads(p.read_text()) for p in (run_dir / "inputs").glob("rank-*.json")]
    assert sorted(log["rank"] for log in logs) == [0, 1]
    a, b = sorted(logs, key=lambda log: log["process_index"])
    assert [a["process_index"], b["process_index"]] == [0, 1]
    assert a["process_count"] == b["process_count"] == 2 and a["device_count"] == 2
    assert a["step"] == b["step"] == 0  # the same global step ...
    assert a["rows"] and b["rows"] and not set(a["rows"]) & set(b["rows"])  # ... fed from different rows
    # together about one global batch: a packed step fills a fixed token budget
    # (batch_size 8 x the mean length + 10%), so it holds 8 examples give or take a few
    assert 4 <= len(a["rows"]) + len(b["rows"]) <= 12


def test_a_multilabel_sweep_ranks_trials_by_macro_roc_auc(two_process_multilabel):
    summary = two_process_multilabel
    (trial,) = summary["trials"]
    assert summary["best_trial"] == trial["trial"]
    metrics = json.loads((Path(trial["run_dir"]) / "metrics.json").read_text())
    assert list(metrics["per_category"]) == ["violence", "race", "religion"]
    assert trial["test_roc_auc"] == pytest.approx(metrics["roc_auc_macro"])


def _kill_a_worker_mid_run(sweep_dir: Path, done: threading.Event, killed: list) -> None:
    """SIGKILL the Ray Train worker of the first trial to write its epoch-2 checkpoint
    (epoch 1's, reported to Ray an epoch earlier, is by then in Ray's storage). Epoch
    checkpoints are the only ones (checkpoint.every_steps 0), so the second distinct step
    seen is epoch 2's, however many steps an epoch has. The worker's pid comes from the
    input log it wrote at its first step."""
    deadline, seen = time.time() + 600, {}
    while time.time() < deadline and not done.is_set():
        for trial in (sweep_dir / "trials").glob("trial_*"):
            steps = seen.setdefault(trial.name, set())
            steps.update(int(p.name) for p in (trial / "checkpoints").glob("*") if p.name.isdigit())
            logs = list((trial / "inputs").glob("rank-0-pid-*.json"))
            if logs and len(steps) >= 2:
                os.kill(int(logs[0].stem.rsplit("-", 1)[1]), signal.SIGKILL)
                killed.append(trial.name)
                return
        time.sleep(0.05)


def _terminated_trial(tune_dir: Path) -> str | None:
    """The directory name of a trial that Tune's newest experiment state marks TERMINATED."""
    states = sorted(tune_dir.glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        trials = [json.loads(state) for state, _ in json.loads(states[-1].read_text())["trial_data"]]
    except (KeyError, ValueError):  # json.JSONDecodeError is a ValueError
        return None  # caught mid-write; the next poll reads it whole
    done = [t["trial_id"] for t in trials if t.get("status") == "TERMINATED"]
    return f"trial_{done[0]}" if done else None


def test_a_killed_worker_resumes_from_its_checkpoint_and_an_interrupted_sweep_resumes(tmp_path):
    """One sweep, two failures: the first trial's worker is SIGKILLed mid-run (Ray Train restarts
    it from its last checkpoint), then, once that trial is finished, the driver gets Ctrl+C while
    the second runs; `resume=true` finishes the sweep without rerunning the first trial."""
    out = tmp_path / "runs"
    done, killed = threading.Event(), []
    # Trial 1: 200 rows at batch 1, 200 steps an epoch against a 50 ms watcher poll, killed
    # in epoch 3 of 4. Trial 2 (16 rows) is the one the Ctrl+C interrupts.
    watcher = threading.Thread(target=_kill_a_worker_mid_run, args=(out / "ci_sweep", done, killed), daemon=True)
    watcher.start()
    args = _sweep(out, "train.epochs=4", 'sweep.space={"data.train_size": {"grid": [200, 16]}}',
                  "sweep.scheduler.name=fifo", "train.batch_size=1", "train.log_every_steps=100", "--num-cpus", "2")
    log = tmp_path / "driver.log"  # a file, not a pipe: a restart's traceback could fill a pipe's buffer
    with log.open("wb") as sink:
        driver = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=tmp_path,
                                  start_new_session=True)
    try:
        deadline, first = time.time() + 600, None
        while time.time() < deadline and first is None and driver.poll() is None:
            # Interrupt only once Tune's own saved state calls a trial TERMINATED: a trial's last
            # result (`finished` in its result.json) comes seconds before its function returns,
            # and a Ctrl+C in between rightly leaves it RUNNING, to be resumed.
            first = _terminated_trial(out / "ci_sweep" / "tune")
            time.sleep(0.5)
        assert first, "no trial finished: " + log.read_text(errors="replace")[-3000:]
        driver.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and stops
        driver.wait(timeout=300)
    finally:
        done.set()
        if driver.poll() is None:
            driver.kill()
    assert killed == [first], (killed, first)  # the long trial was the one killed, and it finished
    victim = out / "ci_sweep" / "trials" / first
    history = json.loads((victim / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    sessions = sorted(json.loads(p.read_text())["step"] for p in (victim / "inputs").glob("rank-0-*.json"))
    # Two sessions: the first from step 0, the restarted one from a checkpoint (not from scratch).
    assert len(sessions) == 2 and sessions[0] == 0 and sessions[1] > 0, sessions
    assert sessions[1] in {h["step"] for h in history}

    first_mtime = (victim / "metrics.json").stat().st_mtime_ns
    r = subprocess.run([*args, "resume=true"], capture_output=True, text=True, timeout=900, env=subprocess_env(),
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    summary = _results(out)
    assert summary["restored"] is True
    assert len(summary["trials"]) == 2 and all(t["status"] == "finished" for t in summary["trials"])
    assert sorted(t["data.train_size"] for t in summary["trials"]) == [16, 200]
    assert (victim / "metrics.json").stat().st_mtime_ns == first_mtime  # the finished trial was not rerun
    assert len(list((victim / "inputs").glob("rank-0-*.json"))) == 2  # ... nor restarted a third time
