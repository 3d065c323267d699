"""Sweep files: parsing, search-space validation, per-trial configs, the
validation split, and a driver side that never imports JAX (no Ray cluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ETHOS, ROOT, needs_ethos

from toolkit.config import ConfigError
from toolkit.sweep.config import load_sweep

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def _write(tmp_path: Path, sweep: dict, **run) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "s", **run, "sweep": sweep}))
    return p


@pytest.mark.parametrize("path", [p for p in SWEEPS if "sweep:" in p.read_text()], ids=lambda p: p.name)
def test_every_sweep_file_loads(path):
    cfg = load_sweep(path)
    assert cfg.sweep.space and Path(cfg.run.output_dir).is_absolute()


def test_trial_config_applies_params_and_gets_its_own_dir_and_wandb_group(tmp_path):
    cfg = load_sweep(ROOT / "sweeps/ci.yaml", [f"output_dir={tmp_path}", "tracking.group=null", "resume=true"])
    assert cfg.run.resume is True  # the sweep resumes ...
    run = cfg.trial_run({"train.learning_rate": 0.5, "lora.rank": 16}, "trial_x")
    assert run.resume is False  # ... a trial resumes only from the checkpoint Ray hands it
    assert run.train.learning_rate == 0.5 and run.lora.rank == 16
    assert run.lora.targets == cfg.run.lora.targets  # untouched keys come from the base
    assert run.run_dir == tmp_path / "ci_sweep" / "trials" / "trial_x"
    assert run.tracking.group == "ci_sweep"


def test_a_sweep_into_an_object_store_uri_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"output_dir gs://bucket/sweeps is an object-store URI.*mount the bucket") as e:
        load_sweep(ROOT / "sweeps/ci.yaml", ["output_dir=gs://bucket/sweeps"])
    assert "\n" not in str(e.value)


def test_overrides_reach_run_and_sweep_keys(tmp_path):
    cfg = load_sweep(ROOT / "sweeps/ci.yaml", ["train.epochs=7", "sweep.num_samples=3",
                                                "sweep.resources.num_workers=2", "sweep.space={}"])
    assert cfg.run.train.epochs == 7 and cfg.sweep.num_samples == 3
    assert cfg.sweep.resources.num_workers == 2 and cfg.sweep.space == {}


def test_relative_paths_become_absolute_so_trials_elsewhere_find_them(tmp_path, monkeypatch):
    (tmp_path / "data.csv").write_text("text,label\na,x\nb,y\n")
    monkeypatch.chdir(tmp_path)
    p = _write(tmp_path, {"space": {"train.epochs": {"grid": [1, 2]}}}, data={"source": "data.csv", "validation_size": 1},
               classifier={"labels": ["x", "y"]})
    cfg = load_sweep(p)
    assert cfg.run.data.source == str(tmp_path / "data.csv")
    assert cfg.sweep_dir == tmp_path / "runs" / "s"


@pytest.mark.parametrize("space, message", [
    ({"train.lr": {"grid": [1]}}, "sweep.space.train.lr: not a run-config key"),
    ({"rank": {"grid": [1]}}, "did you mean ['lora.rank']"),
    ({"lora.rank": [4, 8]}, "expected one of {grid:"),
    ({"lora.rank": {"grid": []}}, "grid needs a non-empty list"),
    ({"train.learning_rate": {"loguniform": [0, 1e-3]}}, "loguniform needs [low, high], both > 0"),
    ({"train.learning_rate": {"uniform": [1e-3]}}, "uniform needs [low, high]"),
    ({"train.loss": {"choice": ["class", "hinge"]}}, "value 'hinge' is not valid"),
    ({"name": {"grid": ["a", "b"]}}, "cannot be swept"),
])
def test_bad_search_spaces_name_the_key_and_the_fix(tmp_path, space, message):
    with pytest.raises(ConfigError) as e:
        load_sweep(_write(tmp_path, {"space": space}))
    assert message in str(e.value) and str(tmp_path / "s.yaml") in str(e.value)


def test_every_training_mode_is_a_sweep_key_and_a_cross_that_cannot_run_is_refused(tmp_path):
    """train.trainable and model.base_quant sweep like any key (issue 16); crossing full with a
    quantized base would fail inside a trial, so the space is refused before one starts."""
    modes = {"train.trainable": {"grid": ["lora", "head", "full"]}, "model.base_quant": {"grid": ["none"]}}
    cfg = load_sweep(ROOT / "sweeps/ci.yaml", [f"output_dir={tmp_path}", f"sweep.space={modes}"])
    runs = [cfg.trial_run({"train.trainable": m, "model.base_quant": "none"}, m) for m in ("lora", "head", "full")]
    assert [r.train.trainable for r in runs] == ["lora", "head", "full"]
    quant = {"train.trainable": {"grid": ["lora", "head"]}, "model.base_quant": {"grid": ["none", "int8", "int4"]}}
    assert load_sweep(ROOT / "sweeps/ci.yaml", [f"output_dir={tmp_path}", f"sweep.space={quant}"])
    crossed = {"train.trainable": {"grid": ["lora", "full"]}, "model.base_quant": {"choice": ["none", "int4"]}}
    with pytest.raises(ConfigError) as e:
        load_sweep(ROOT / "sweeps/ci.yaml", [f"output_dir={tmp_path}", f"sweep.space={crossed}"])
    msg = str(e.value)
    assert "\n" not in msg and "the trial train.trainable='full', model.base_quant='int4' is not valid" in msg
    assert "none with train.trainable=full" in msg


@pytest.mark.parametrize("sweep, message", [
    ({"scheduler": {"name": "hyperband"}}, "asha or fifo"),
    ({"resources": {"tpu_topology": "4x4"}}, "go together"),
    ({"num_smaples": 2}, "unknown key(s) ['num_smaples']"),
])
def test_bad_sweep_sections_are_named(tmp_path, sweep, message):
    with pytest.raises(ConfigError, match="sweep") as e:
        load_sweep(_write(tmp_path, sweep))
    assert message in str(e.value)


@pytest.mark.slow
def test_tune_search_space_and_asha_horizon():
    from ray import tune

    from toolkit.sweep.tuner import max_epochs, param_space

    space = param_space({"train.learning_rate": {"loguniform": [1e-4, 1e-2]}, "lora.rank": {"grid": [4, 8]},
                         "train.epochs": {"choice": [2, 5]}})
    assert isinstance(space["train"]["learning_rate"], tune.search.sample.Float)
    assert space["lora"]["rank"] == {"grid_search": [4, 8]}
    cfg = load_sweep(ROOT / "sweeps/ci.yaml", ["sweep.space={train.epochs: {choice: [2, 5]}}"])
    assert max_epochs(cfg) == 5


@pytest.mark.slow
def test_the_driver_side_never_imports_jax():
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from toolkit.sweep.config import load_sweep\n"
            "import toolkit.sweep.tuner, toolkit.sweep.results, toolkit.sweep.trial\n"
            "import ray.tune, ray.train.v2.jax\n"
            "cfg = load_sweep(%r); toolkit.sweep.tuner.build_tuner(cfg, resume=False)\n"
            "print('jax' in sys.modules)" % (str(ROOT), str(ROOT / "sweeps/ci.yaml")))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "False"


@needs_ethos
def test_validation_rows_come_from_the_end_of_the_train_part_and_never_overlap():
    from toolkit.config import DataSection
    from toolkit.data.datasets import load_splits
    from toolkit.data.sources import DataError

    plain = load_splits(DataSection(local_dir=str(ETHOS), train_size=200))
    split = load_splits(DataSection(local_dir=str(ETHOS), train_size=200, validation_size=100))
    assert plain.validation is None and len(split.validation) == 100
    assert split.train["text"].tolist() == plain.train["text"].tolist()  # the codelab's 200 rows, unchanged
    assert not set(split.validation.index) & set(split.train.index)
    assert not set(split.validation.index) & set(split.test.index)
    with pytest.raises(DataError, match="data.validation_size=800"):
        load_splits(DataSection(local_dir=str(ETHOS), validation_size=800))
