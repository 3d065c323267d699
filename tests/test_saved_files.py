"""The save format: a classifier saved by an earlier version loads and scores the same,
classifier.json holds the spec whole, and it is read with a config's strictness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from toolkit.classifier import AgileClassifier
from toolkit.multilabel import MultiLabelClassifier
from toolkit.saved_files import FORMAT, SavedFileError
from toolkit.spec import IN_MEMORY, ClassifierSpec

# Saved by main at e55cd40 (before the save format had a module of its own), with the
# probabilities it gave: a tiny random Gemma 3 in memory (base.npz), rank-2 adapters.
V1 = Path(__file__).parent / "data" / "saved_classifier_v1"
pytestmark = pytest.mark.xdist_group("saved_files")  # one worker builds the re-saved classifier


@pytest.fixture(scope="module")
def resaved(tmp_path_factory) -> tuple[Path, list[list[float]]]:
    """The format-1 classifier loaded and saved again by today's code, with its probabilities."""
    clf = AgileClassifier.load(V1 / "classifier", progress=False)
    out = tmp_path_factory.mktemp("v2") / "clf"
    clf.save(out)
    return out, clf.predict_proba(json.loads((V1 / "expected.json").read_text())["texts"]).tolist()


@pytest.mark.slow
def test_a_classifier_saved_by_an_earlier_version_loads_and_scores_the_same(resaved):
    expected = json.loads((V1 / "expected.json").read_text())
    np.testing.assert_allclose(resaved[1], expected["proba"], atol=1e-6)
    meta = json.loads((resaved[0] / "classifier.json").read_text())
    assert meta["format"] == FORMAT and set(meta["spec"]) == {"classifier", "model", "lora", "train", "mesh"}
    assert meta["spec"]["model"]["name"] == IN_MEMORY and meta["spec"]["classifier"]["labels"] == ["spam", "ham"]
    again = AgileClassifier.load(resaved[0], progress=False)
    assert again.spec == AgileClassifier.load(V1 / "classifier", progress=False).spec
    assert again.class_names == ("spam", "ham") and list(again.classes_) == ["spam", "ham"]
    np.testing.assert_allclose(again.predict_proba(expected["texts"]), expected["proba"], atol=1e-6)


def test_the_spec_is_the_run_configs_sections_and_survives_the_arguments_round_trip():
    from toolkit.config import load_config

    cfg = load_config(None, ["classifier.labels=[ok, bad]", "lora.rank=4", "train.epochs=2", "model.remat=full",
                             "classifier.threshold={metric: f1}", "data.validation_size=8"])
    clf = AgileClassifier.from_config(cfg)
    assert clf.spec == ClassifierSpec.from_config(cfg)
    assert (clf.spec.lora, clf.spec.train, clf.spec.model, clf.spec.mesh) == (cfg.lora, cfg.train, cfg.model, cfg.mesh)
    assert clf.spec.classifier.threshold is None  # chosen after fitting, not part of what the classifier is
    assert (clf.get_params()["remat"], clf.get_params()["lora"].rank) == ("full", 4)
    assert AgileClassifier.from_spec(clf.spec).spec == clf.spec

    ml = load_config(None, ["data.label_columns=[a, b]", "classifier.task=multilabel"])
    multi = AgileClassifier.from_config(ml, categories=["a", "b"])  # the kind classifier.task names
    assert type(multi) is MultiLabelClassifier and multi.category_names == ("a", "b")
    assert AgileClassifier.from_spec(multi.spec).spec == multi.spec
    with pytest.raises(ValueError, match="the spec is a single_label classifier's; use AgileClassifier.from_spec"):
        MultiLabelClassifier.from_spec(clf.spec)
    with pytest.raises(ValueError, match=r"model.name '\(in memory\)'.*pass model=\(gemma, tokenizer\)"):
        AgileClassifier.from_spec(ClassifierSpec.from_dict({"classifier": {}, "model": {"name": IN_MEMORY}}, "test"))


def _edited(tmp_path: Path, edit) -> Path:
    out = tmp_path / "clf"
    shutil.copytree(V1 / "classifier", out)
    meta = json.loads((out / "classifier.json").read_text())
    edit(meta)
    (out / "classifier.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(colour="blue"), r"classifier.json: unknown key 'colour'"),
    (lambda m: m["train"].update(epochz=3), r"classifier.json: train: unknown key\(s\) \['epochz'\]"),
    (lambda m: m["train"].update(epochs="two"), r"classifier.json: train.epochs: got 'two'; must be an integer"),
    (lambda m: m["lora"].update(rank=0), r"classifier.json: .*lora.rank"),
    (lambda m: m.pop("prompt"), r"classifier.json: key 'prompt' is missing"),
    (lambda m: m.update(kind="regression"), r"classifier.json: kind 'regression' is not one of"),
    (lambda m: m.update(labels=["spam"]), r"classifier.json: classifier.labels: .*at least two"),
])
def test_classifier_json_is_read_as_strictly_as_a_config(tmp_path, edit, message):
    with pytest.raises(SavedFileError, match=message):
        AgileClassifier.load(_edited(tmp_path, edit), progress=False)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(colour="blue"), r"classifier.json: unknown key 'colour'"),
    (lambda m: m["spec"]["train"].update(epochz=3), r"classifier.json: spec.train: unknown key\(s\) \['epochz'\]"),
    (lambda m: m["spec"]["lora"].update(rank="two"), r"classifier.json: spec.lora.rank: got 'two'; must be an integer"),
    (lambda m: m["spec"]["model"].update(remat="some"), r"classifier.json: spec.model.remat: got 'some'"),
    (lambda m: m["spec"]["classifier"].update(task="regression"), r"classifier.json: spec.classifier.task: got "
     r"'regression'; must be one of single_label, multilabel"),
    (lambda m: m.pop("spec"), r"classifier.json: key 'spec' is missing"),
    (lambda m: m.update(format="agile-toolkit-classifier/9"), r"classifier.json: format .*/9' is not"),
])
def test_a_format_2_classifier_json_is_read_as_strictly(resaved, tmp_path, edit, message):
    out = tmp_path / "clf"
    shutil.copytree(resaved[0], out)
    meta = json.loads((out / "classifier.json").read_text())
    edit(meta)
    (out / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(SavedFileError, match=message):
        AgileClassifier.load(out, progress=False)
