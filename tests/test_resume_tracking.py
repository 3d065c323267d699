"""Checkpoints, exact resume after SIGKILL, W&B offline runs, and the training guards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import keras_fixtures as kf
from conftest import HAM, ROOT, SPAM, subprocess_env, train_cli, wandb_records, wandb_run_record, wandb_summary


@pytest.fixture(scope="module")
def run_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    preset = kf.make_preset("gemma3", tmp)
    texts = [(SPAM if i % 2 == 0 else HAM)[i % 3] + f" {i}" for i in range(40)]
    labels = ["spam" if i % 2 == 0 else "ham" for i in range(40)]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp / "data.csv", index=False)
    cfg = {
        "output_dir": str(tmp / "runs"),
        "model": {"name": str(preset), "param_dtype": "float32"},
        "lora": {"rank": 2, "targets": ["q", "v"], "dropout": 0.1},
        "data": {"source": str(tmp / "data.csv"), "test_fraction": 0.2, "validation_size": 6},
        "classifier": {"labels": ["spam", "ham"], "verbalizers": {"spam": "a", "ham": "in"}, "max_length": 64,
                       "prompt": {"instructions": "Classify"}},
        "train": {"epochs": 4, "batch_size": 2, "learning_rate": 0.01, "log_every_steps": 4},
        "checkpoint": {"every_steps": 1, "keep": 2},
        "tracking": {"mode": "offline"},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp


@pytest.fixture(scope="module")
def full_run(run_setup) -> Path:
    r = train_cli(run_setup / "cfg.yaml", "name=full")
    assert r.returncode == 0, r.stderr[-3000:]
    return run_setup / "runs" / "full"


def _lora(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "classifier" / "lora.npz") as z:
        return {k: z[k] for k in z.files}


def _steps(ckpt: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(run_setup, full_run):
    ckpt = run_setup / "runs" / "killed" / "checkpoints"
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch/train.py"), "--config", str(run_setup / "cfg.yaml"),
                             "--quiet", "name=killed"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and (not _steps(ckpt) or max(_steps(ckpt)) < 20):
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    steps_per_epoch = json.loads((full_run / "metrics.json").read_text())["history"][0]["step"]
    last = max(_steps(ckpt))
    assert last < 4 * steps_per_epoch and last % steps_per_epoch, "expected a mid-epoch kill"
    assert not (run_setup / "runs" / "killed" / "metrics.json").exists()

    r = train_cli(run_setup / "cfg.yaml", "name=killed", "resume=true", "train.batch_size=4")
    assert r.returncode != 0 and "different config" in r.stderr and "train.batch_size: 2 -> 4" in r.stderr
    # Settings that change only how the run reports may change, and are logged.
    r = train_cli(run_setup / "cfg.yaml", "name=killed", "resume=true", "train.eval_batch_size=8",
                  "train.log_every_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train.eval_batch_size: 16 -> 8" in r.stderr and "train.log_every_steps: 4 -> 2" in r.stderr
    resumed, full = _lora(run_setup / "runs" / "killed"), _lora(full_run)
    assert resumed.keys() == full.keys()
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k], err_msg=k)
    hist = json.loads((run_setup / "runs" / "killed" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]


@pytest.mark.slow
def test_checkpoints_keep_the_last_n_and_the_best(full_run):
    from toolkit.config import CheckpointSection
    from toolkit.train.checkpoint import Checkpointer

    hist = json.loads((full_run / "metrics.json").read_text())["history"]
    steps = _steps(full_run / "checkpoints")
    last = hist[-1]["step"]
    c = Checkpointer(full_run / "checkpoints", CheckpointSection(keep=2))
    assert c.latest_step() == last
    by_step = {h["step"]: h["eval_roc_auc"] for h in hist}
    assert by_step[c.best_step()] == max(by_step.values())  # the best epoch (ties: any of them)
    assert set(steps) == {last - 1, last, c.best_step()}  # last 2 (every_steps=1) + best; 60 others deleted
    assert not any(".orbax-checkpoint-tmp" in p.name for p in (full_run / "checkpoints").iterdir())


@pytest.mark.slow
def test_wandb_offline_run_holds_losses_eval_metrics_and_plots(full_run):
    records = wandb_records(full_run)
    history = [rec["history"]["item"] for rec in records if rec.get("type") == "history"]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert len(losses) >= 4 and all(np.isfinite(losses))
    for key in ("train/learning_rate", "train/grad_norm", "train/tokens_per_s"):
        assert any(key in h for h in history), key
    evals = [h for h in history if "epoch/eval_f1" in h]
    assert len(evals) == 4 and all(0.0 <= h["epoch/eval_roc_auc"] <= 1.0 for h in evals)
    for image in ("eval/confusion_matrix", "eval/roc_curve", "test/roc_curve"):
        paths = [h[f"{image}.path"] for h in history if f"{image}.path" in h]
        assert paths, image
        (files,) = list((full_run / "wandb").glob("offline-run-*/files"))
        assert (files / paths[-1]).is_file() and (files / paths[-1]).read_bytes()[:4] == b"\x89PNG"
    assert wandb_run_record(records)["config"]["update"]["lora"]["rank"] == 2
    summary = wandb_summary(records)
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert summary["test/roc_auc"] == pytest.approx(metrics["roc_auc"])


@pytest.mark.slow
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tiny_tokenizer, tmp_path):
    from flax import nnx

    from toolkit.classifier import AgileClassifier
    from toolkit.config import CheckpointSection
    from toolkit.models.configs import Runtime, get_config
    from toolkit.models.gemma import Gemma
    from toolkit.train.checkpoint import Checkpointer
    from toolkit.train.callbacks import Checkpointing, TrainingDiverged

    base = Gemma(get_config("tiny_gemma3"), runtime=Runtime(param_dtype="float32"), rngs=nnx.Rngs(0))
    texts, labels = SPAM * 4, ["a"] * 12

    def clf(lr):
        return AgileClassifier(["a", "in"], model=(base, tiny_tokenizer), max_length=32, progress=False,
                               prompt={"instructions": "Classify"},
                               train={"epochs": 2, "batch_size": 4, "learning_rate": lr})

    ckpt = tmp_path / "ckpt"
    def checkpoints(resume=False):
        return [Checkpointing(Checkpointer(ckpt, CheckpointSection(every_steps=1)), resume=resume)]

    clf(1e-3).fit(texts + HAM, labels + ["in"] * 3, callbacks=checkpoints())
    good = Checkpointer(ckpt).latest_step()
    with pytest.raises(TrainingDiverged, match=rf"last good checkpoint: .*ckpt/{good}.*learning_rate"):
        # Same data and config, a NaN learning rate (set past the config's own range check, which
        # refuses it): resuming from the end, one more epoch diverges.
        c = clf(1e-3).set_params(train={"epochs": 3, "batch_size": 4, "learning_rate": 1e-3})
        object.__setattr__(c.train_config, "learning_rate", float("nan"))
        c.fit(texts + HAM, labels + ["in"] * 3, callbacks=checkpoints(resume=True))
    assert Checkpointer(ckpt).latest_step() == good


def test_out_of_memory_names_the_knobs():
    import jax

    from toolkit.config import TrainConfig
    from toolkit.train.loop import OutOfMemory, _oom_guard
    from toolkit.train.mesh import make_mesh

    def step(*_):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17.0GiB")

    guarded = _oom_guard(step, TrainConfig(batch_size=64), make_mesh(devices=jax.devices()[:1]))
    with pytest.raises(OutOfMemory, match=r"batch 64.*grad_accum_steps.*model.remat=full.*mesh.fsdp"):
        guarded()


def test_resume_allows_only_the_listed_changes():
    from toolkit.train.checkpoint import CheckpointError
    from toolkit.experiment import check_same_run

    saved = {"train": {"learning_rate": 0.01, "epochs": 3, "eval_batch_size": 16}, "data": {"local_dir": "/a"},
             "lora": {"rank": 2}}
    lower = {**saved, "train": {**saved["train"], "learning_rate": 0.001}, "data": {"local_dir": "/b"}}
    assert set(check_same_run(saved, lower, "ckpt")) == {"train.learning_rate: 0.01 -> 0.001",
                                                          "data.local_dir: '/a' -> '/b'"}
    for changed in ({**saved, "train": {**saved["train"], "epochs": 4}}, {**saved, "lora": {"rank": 4}}):
        with pytest.raises(CheckpointError, match="different config"):
            check_same_run(saved, changed, "ckpt")
