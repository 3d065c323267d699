"""YAML configs with key=value overrides; every mistake named."""

from pathlib import Path

import pytest

from conftest import ROOT

from toolkit.config import ConfigError, RunConfig, dump_config, load_config



def test_shipped_ethos_config_loads_with_overrides():
    cfg = load_config(ROOT / "sweeps/ethos_270m.yaml", ["train.epochs=2", "lora.targets=[q,v]", "lora.alpha=8"])
    assert cfg.train.epochs == 2 and cfg.lora.targets == ("q", "v") and cfg.lora.scale == 1.0
    assert cfg.classifier.labels == ("no", "yes") and cfg.model.name == "gemma3_270m"
    assert cfg.run_dir == Path("runs/ethos_270m")


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["name=x", "train.learning_rate=3e-4", "classifier.prompt.separator=' | '"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg and isinstance(cfg, RunConfig)
    assert cfg.train.learning_rate == 3e-4 and cfg.classifier.prompt.separator == " | "


@pytest.mark.parametrize("override, message", [
    ("lora.rnak=3", r"lora: unknown key\(s\) \['rnak'\]; known keys: \['rank'"),
    ("classifier.labels=[no,yes]", "quote it"),
    ("train.epochs=many", r"train.epochs: got 'many'; must be an integer"),
    ("train.loss=focal", "train.loss: got 'focal'; must be class or lm"),
    ("lora.targets=[qkv]", "qkv"),
    ("epochs", "not key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("train.learning_rate=-1", r"train.learning_rate: got -1.0; must be > 0"),
    ("train.learning_rate=0", r"train.learning_rate: got 0.0; must be > 0"),
    ("train.learning_rate=.nan", r"train.learning_rate: got nan; must be > 0"),
    ("train.warmup_ratio=1.5", r"train.warmup_ratio: got 1.5; must be in \[0, 1\)"),
    ("train.grad_clip=0", r"train.grad_clip: got 0.0; must be > 0"),
    ("train.weight_decay=-0.1", r"train.weight_decay: got -0.1; must be >= 0"),
    ("train.batch_size=0", r"train.batch_size: got 0; must be >= 1"),
    ("train.schedule=cosin", r"train.schedule: got 'cosin'; must be cosine, linear or constant"),
    ("data.test_fraction=0", r"data.test_fraction: got 0.0; must be between 0 and 1"),
    ("data.test_fraction=-0.5", r"data.test_fraction: got -0.5; must be between 0 and 1"),
    ("data.test_fraction=1", r"data.test_fraction: got 1.0; must be between 0 and 1"),
    ("data.train_size=0", r"data.train_size: got 0; must be a positive number of rows"),
    ("data.validation_size=-1", r"data.validation_size: got -1; must be >= 0"),
    ("data.label_column=text", r"data.label_column: got 'text'; must be a different column"),
    ("data.label_names={no: a, yes: b}", r"data.label_names: got .*; must map strings to strings: .*quote it"),
    ("checkpoint.best_metric=eval_bogus", r"checkpoint.best_metric: got 'eval_bogus'; must be a metric the run "
                                          r"scores each epoch: one of eval_roc_auc"),
    ("checkpoint.keep=0", r"checkpoint.keep: got 0; must be >= 1"),
    ("classifier.labels=[a]", r"classifier.labels: got \['a'\]; must be at least two distinct"),
    ("classifier.labels=[a,a]", r"classifier.labels: got \['a', 'a'\]; must be at least two distinct"),
    ("classifier.verbalizers={maybe: x}", r"classifier.verbalizers: .*must be keyed by class names"),
    ("classifier.max_length=2", r"classifier.max_length: got 2; must be >= 8"),
    ("model.dtype=float8", r"model.dtype: got 'float8'; must be one of auto"),
    ("mesh.data=0", r"mesh.data: got 0; must be a positive int or auto"),
    ("tracking.mode=sometimes", r"tracking.mode: got 'sometimes'; must be auto"),
    ("name=a/b", r"name: got 'a/b'; must be a plain directory name"),
    ("name=", r"name: got None; must be a string"),
])
def test_values_out_of_range_are_refused_in_one_format(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, [override])
    assert str(e.value).startswith(f"command-line override {override!r}: "), str(e.value)


def test_a_warm_start_needs_adapters_to_continue():
    with pytest.raises(ConfigError, match=r"warm_start: got 'runs/r1'; must be unset with train.trainable=head"):
        load_config(None, ["warm_start=runs/r1", "train.trainable=head"])
    assert load_config(None, ["warm_start=runs/r1"]).warm_start == "runs/r1"


def test_resume_and_overwrite_together_are_refused():
    with pytest.raises(ConfigError, match=r"overwrite: got True; must be false when resume=true"):
        load_config(None, ["resume=true", "overwrite=true"])
    assert load_config(None, ["overwrite=true"]).overwrite is True


def test_a_bad_override_is_blamed_on_the_command_line_and_a_bad_file_value_on_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 2\n  learning_rate: -3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: train.learning_rate: got -3.0; must be > 0, e.g. 5e-4"
    with pytest.raises(ConfigError) as e:  # the file's value is fine; the override is not
        load_config(path, ["train.learning_rate=1e-3", "train.epochs=abc"])
    assert str(e.value) == "command-line override 'train.epochs=abc': train.epochs: got 'abc'; must be an integer"


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key\(s\) \['trian'\]"):
        load_config(typo)
