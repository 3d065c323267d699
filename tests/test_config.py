"""YAML configs with key=value overrides; every mistake named."""

from pathlib import Path

import pytest

from toolkit.config import ConfigError, RunConfig, dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]


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
    ("train.epochs=many", r"train.epochs: expected int"),
    ("train.loss=focal", "train.loss must be"),
    ("lora.targets=[qkv]", "qkv"),
    ("epochs", "not key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


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
