"""The save format: a classifier saved by an earlier version loads and scores the same, and
classifier.json is read with a config's strictness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from toolkit.classifier import AgileClassifier
from toolkit.saved_files import SavedFileError

# Saved by main at e55cd40 (before the save format had a module of its own), with the
# probabilities it gave: a tiny random Gemma 3 in memory (base.npz), rank-2 adapters.
V1 = Path(__file__).parent / "data" / "saved_classifier_v1"


@pytest.mark.slow
def test_a_classifier_saved_by_an_earlier_version_loads_and_scores_the_same():
    expected = json.loads((V1 / "expected.json").read_text())
    clf = AgileClassifier.load(V1 / "classifier", progress=False)
    assert clf.class_names == ("spam", "ham") and list(clf.classes_) == ["spam", "ham"]
    np.testing.assert_allclose(clf.predict_proba(expected["texts"]), expected["proba"], atol=1e-6)


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
    (lambda m: m.update(labels=["spam"]), r"classifier.json: labels: .*at least two"),
])
def test_classifier_json_is_read_as_strictly_as_a_config(tmp_path, edit, message):
    with pytest.raises(SavedFileError, match=message):
        AgileClassifier.load(_edited(tmp_path, edit), progress=False)
