"""Exports: keras-hub presets and LoRA files that keras-hub itself loads, scoring like we do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import keras_fixtures as kf
from conftest import LABELS, ROOT, VERBALIZERS, no_temp_files, run_cli, train_cli
from toolkit.classifier import AgileClassifier
from toolkit.export import ExportError, export

WORDS = ["win", "a", "prize", "now", "the", "meeting", "is", "at", "noon", "free", "money", "see", "you",
         "lunch", "report", "looks", "good", "click", "here", "sea"]
TASKS = {"gemma": "GemmaCausalLM", "gemma3": "Gemma3CausalLM", "gemma4": "Gemma4CausalLM"}


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 6))) for _ in range(n)]


@pytest.fixture(scope="module", params=["gemma", "gemma3", "gemma4"])
def trained(request, tmp_path_factory):
    """A tiny keras-hub preset of the family, a classifier trained on it a few steps, saved."""
    tmp = tmp_path_factory.mktemp(f"export_{request.param}")
    preset = kf.make_preset(request.param, tmp)
    clf = AgileClassifier(LABELS, model=str(preset), verbalizers=VERBALIZERS, prompt={"instructions": "Classify"},
                          max_length=96, progress=False, param_dtype="float32",
                          lora={"rank": 4, "alpha": 8, "targets": ["q", "v", "o", "up", "down"]},
                          train={"epochs": 2, "batch_size": 8, "learning_rate": 3e-2})
    texts = _texts(24, 0)
    clf.fit(texts, [LABELS[i % 2] for i in range(24)])
    saved = clf.save(tmp / "classifier")
    return request.param, preset, clf, saved, tmp


def _keras_scores(spec: dict, tmp: Path) -> dict:
    """Run bench/keras_scorer.py on `spec` in a fresh Python process."""
    path = tmp / f"spec_{len(list(tmp.glob('spec_*')))}.json"
    path.write_text(json.dumps(spec))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "keras_scorer.py"), str(path)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _spec(clf: AgileClassifier, texts: list[str], **kw) -> dict:
    head, tail = clf.prompt_format.head_and_tail(clf.class_names)
    return {"head": head, "tail": tail, "texts": texts,
            "class_words": [clf.verbalizer_map.get(c, c) for c in clf.class_names], **kw}


@pytest.mark.slow
def test_keras_preset_export_scores_like_ours_in_keras_hub(trained):
    kind, _, clf, saved, tmp = trained
    out = export(saved, tmp / "keras_preset", format="keras-preset")
    for name in ("config.json", "metadata.json", "model.weights.h5", "task.json", "preprocessor.json",
                 "tokenizer.json", "assets/tokenizer/vocabulary.spm", "classifier.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["class_name"] == \
        {"gemma": "GemmaBackbone", "gemma3": "Gemma3Backbone", "gemma4": "Gemma4Backbone"}[kind]
    texts = _texts(20, 1)
    ours = clf.predict_proba(texts)
    theirs = _keras_scores(_spec(clf, texts, preset=str(out), task=TASKS[kind]), tmp)
    assert theirs["task"] == TASKS[kind]
    assert theirs["prompt_ids"] == [clf.questions.encoders[0].encode(t)[0] for t in texts]  # same tokens, so weights decide
    assert ours[:, 1].std() > 1e-3  # the trained adapters move the scores: a merge that dropped them would fail
    np.testing.assert_allclose(np.array(theirs["probs"]), ours, atol=1e-4, rtol=0)
    # ... and our own loader reads the same directory, merged weights and all.
    again = AgileClassifier.load(out, progress=False)
    np.testing.assert_allclose(again.predict_proba(texts), ours, atol=1e-5, rtol=0)
    assert again.class_names == clf.class_names and again.prompt_format == clf.prompt_format


@pytest.mark.slow
def test_lora_export_loads_through_keras_enable_lora_and_orbax(trained):
    import orbax.checkpoint as ocp

    kind, preset, clf, saved, tmp = trained
    out = export(saved, tmp / "lora", format="lora")
    info = json.loads((out / "lora.json").read_text())
    assert info["rank"] == 4 and info["keras_target_layer_names"] == [
        "query", "value", "attention_output", "ffw_gating_2", "ffw_linear"]
    texts = _texts(20, 2)
    ours = clf.predict_proba(texts)
    theirs = _keras_scores(_spec(clf, texts, preset=str(preset), task=TASKS[kind], lora=str(out / "adapters.lora.h5"),
                                 rank=4, target_layer_names=info["keras_target_layer_names"]), tmp)
    np.testing.assert_allclose(np.array(theirs["probs"]), ours, atol=1e-4, rtol=0)
    # Orbax form: the same adapter tensors (alpha / rank not folded in: that is keras-only).
    tree = ocp.StandardCheckpointer().restore((out / "orbax").absolute())
    with np.load(saved / "lora.npz") as z:
        for name in z.files:
            node = tree
            for part in name.split("."):
                node = node[part]
            np.testing.assert_array_equal(np.asarray(node), z[name])
    np.testing.assert_allclose(AgileClassifier.load(out, progress=False).predict_proba(texts), ours, atol=1e-6)


@pytest.mark.slow
def test_run_and_orbax_checkpoints_export_the_same_adapters(tmp_path):
    """A run directory without its classifier/ (a killed run) exports from its Orbax checkpoint."""
    import yaml

    preset = kf.make_preset("gemma3", tmp_path)
    texts = _texts(32, 3)
    import pandas as pd

    pd.DataFrame({"text": texts, "label": [LABELS[i % 2] for i in range(32)]}).to_csv(tmp_path / "d.csv", index=False)
    cfg = {"name": "r", "output_dir": str(tmp_path / "runs"), "model": {"name": str(preset), "param_dtype": "float32"},
           "lora": {"rank": 2, "targets": ["q", "v"]},
           "data": {"source": str(tmp_path / "d.csv"), "test_fraction": 0.25},
           "classifier": {"labels": list(LABELS), "verbalizers": VERBALIZERS, "max_length": 96,
                          "prompt": {"instructions": "Classify"}},
           "train": {"epochs": 2, "batch_size": 8, "learning_rate": 0.03}, "tracking": {"mode": "disabled"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = train_cli(tmp_path / "c.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "r"
    from_run = export(run, tmp_path / "from_run", format="lora")  # via run/classifier
    os.rename(run / "classifier", tmp_path / "moved_classifier")
    from_ckpt = export(run, tmp_path / "from_ckpt", format="lora")  # via run/checkpoints (best step)
    assert (from_ckpt / "EXPORTED_FROM").read_text().startswith(str(run / "checkpoints"))
    with np.load(from_run / "lora.npz") as a, np.load(from_ckpt / "lora.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        # best (by eval ROC-AUC) and last may be different epochs; both are real adapters of this run
        assert all(np.abs(b[k]).max() > 0 for k in b.files if k.endswith("lora_b"))


@pytest.mark.slow
def test_export_cli_refuses_bad_inputs_and_leaves_nothing_behind(trained, tmp_path):
    kind, preset, clf, saved, _ = trained
    if kind != "gemma3":
        pytest.skip("one family is enough for the CLI errors")

    from toolkit.commands.export import main

    def cli(*args):
        return run_cli(main, *args)

    # Not our checkpoint: a keras preset is a model, not a trained classifier.
    r = cli("--checkpoint", str(preset), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "is not an agile-toolkit checkpoint" in r.stderr and "classifier.json" in r.stderr
    r = cli("--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no such directory" in r.stderr
    # An existing, non-empty output directory is kept unless --overwrite.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    r = cli("--checkpoint", str(saved), "--out", str(busy))
    assert r.returncode == 2 and "--overwrite" in r.stderr and (busy / "keep.txt").read_text() == "mine"
    r = cli("--checkpoint", str(saved), "--out", str(saved / "inside"))
    assert r.returncode == 2 and "inside the checkpoint" in r.stderr
    r = cli("--checkpoint", str(saved), "--out", str(saved.parent))
    assert r.returncode == 2 and "would replace the checkpoint" in r.stderr
    r = cli("--checkpoint", str(saved), "--out", str(busy), "--overwrite", "--format", "lora")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (busy / "keep.txt").exists() and (busy / "adapters.lora.h5").is_file()
    assert no_temp_files(tmp_path)  # no temp dirs left


def test_a_family_keras_hub_cannot_hold_is_refused_before_anything_is_written(tiny_tokenizer, tmp_path):
    from flax import nnx

    from toolkit.models.configs import Runtime, get_config
    from toolkit.models.gemma import Gemma

    # Gemma 3 with 3 local : 1 global layers: our model runs it, keras-hub's Gemma3Backbone fixes 5 : 1.
    cfg = get_config("tiny_gemma3").replace(sliding_window_pattern=4)
    base = Gemma(cfg, runtime=Runtime(param_dtype="float32"), rngs=nnx.Rngs(0))
    clf = AgileClassifier(LABELS, model=(base, tiny_tokenizer), verbalizers=VERBALIZERS,
                          prompt={"instructions": "Classify"}, max_length=96, progress=False, lora={"rank": 2})
    saved = clf.save(tmp_path / "odd")
    with pytest.raises(ExportError, match=r"cannot be written as a keras-hub preset: .*5 local : 1 global"):
        export(saved, tmp_path / "out", format="keras-preset")
    assert not (tmp_path / "out").exists()
    assert no_temp_files(tmp_path)
    with pytest.raises(ExportError, match="--format 'onnx' is not one of"):
        export(saved, tmp_path / "out", format="onnx")
