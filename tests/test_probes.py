"""Probes of issue 19: bad inputs and faults a new user meets, each with a tiny random model.

Every probe asserts the error class (or the CLI's exit code 2 and its one `error:` line),
where the message points (key, file, 1-based row) and that the disk is as it was: no
stub run dir, no lock or temp file, a finished run byte-identical. `launch/train.py`'s
`main` runs in this process through the same `toolkit.cli.run` handler as its
`__main__` (one JAX start-up for all of them); the two-writers race runs real processes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from flax import nnx

from conftest import LABELS, ROOT, VERBALIZERS, subprocess_env
from conftest import spam_ham as _data
from toolkit import cli
from toolkit.classifier import AgileClassifier
from toolkit.data.sources import DataError
from toolkit.models.configs import Runtime, get_config
from toolkit.models.gemma import Gemma
from toolkit.run_lock import DirLock, LockError, lock_path
from toolkit.saved_files import SavedFileError


def _command_main(name: str):
    return importlib.import_module(f"toolkit.commands.{name}").main


TRAIN_MAIN = _command_main("train")
EXPORT_MAIN = _command_main("export")


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) -> sha256 of its bytes; directories -> 'dir'."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    """A CSV of no/yes rows and a run config on random:tiny_gemma3; one finished run `done`."""
    tmp = tmp_path_factory.mktemp("probes")
    texts = [f"this is text number {i} {'bad' if i % 2 else 'good'}" for i in range(40)]
    labels = ["yes" if i % 2 else "no" for i in range(40)]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp / "data.csv", index=False)
    cfg = {"name": "run", "output_dir": str(tmp / "runs"),
           "model": {"name": "random:tiny_gemma3", "param_dtype": "float32"},
           "lora": {"rank": 2, "targets": ["q", "v"]},
           "data": {"source": str(tmp / "data.csv"), "test_fraction": 0.25, "validation_size": 6},
           "classifier": {"labels": ["no", "yes"], "max_length": 48, "prompt": {"instructions": "Classify"}},
           "train": {"epochs": 1, "batch_size": 8, "learning_rate": 0.01},
           "checkpoint": {"keep": 1}, "tracking": {"mode": "disabled"}}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    code, err = run_train(tmp / "cfg.yaml", "name=done")
    assert code == 0, err
    return tmp


def run_train(config: Path, *overrides: str) -> tuple[int, str]:
    """(exit code, stderr) of `launch/train.py --config CONFIG --quiet OVERRIDES` in this process."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.run(TRAIN_MAIN, ["--config", str(config), "--quiet", *overrides])
    return code, err.getvalue()


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


# (id, overrides, regex the one `error:` line must match). {tmp} is the fixture's folder.
CLI_PROBES = [
    ("negative learning rate", ["train.learning_rate=-1"],
     r"command-line override 'train.learning_rate=-1': train.learning_rate: got -1.0; must be > 0"),
    ("test_fraction 0", ["data.test_fraction=0"], r"data.test_fraction: got 0.0; must be between 0 and 1"),
    ("test_fraction negative", ["data.test_fraction=-0.5"], r"data.test_fraction: got -0.5; must be between 0 and 1"),
    ("unknown best metric", ["checkpoint.best_metric=eval_bogus"],
     r"checkpoint.best_metric: got 'eval_bogus'; must be a metric the run scores each epoch"),
    ("lora rank 0", ["lora.rank=0"], r"override 'lora.rank=0': lora.rank: got 0; must be >= 1"),
    ("epochs not a number", ["train.epochs=abc"], r"override 'train.epochs=abc': train.epochs: got 'abc'; must be an int"),
    ("unknown key", ["lora.rnak=3"], r"override 'lora.rnak=3': lora: unknown key\(s\) \['rnak'\]"),
    ("not key=value", ["epochs"], r"command line: 'epochs' is not key=value"),
    ("unquoted yes/no in label_names", ["data.label_names={no: a, yes: b}"],
     r"data.label_names: got .*must map strings to strings: YAML reads unquoted yes/no"),
    ("missing data file", ["data.source={tmp}/nope.csv"], r"data file '.*nope.csv' does not exist"),
    ("unknown label, file row", ["data.source={tmp}/badlabel.csv"],
     r"badlabel.csv: row 2, column 'label': label 'maybe' is not one of classifier.labels \['no', 'yes'\]"),
    ("unknown label on a multi-line row", ["data.source={tmp}/multiline.csv"],
     r"multiline.csv: row 3 \(line 6 of the file\), column 'label': label 'maybe'"),
    ("duplicate text column", ["data.source={tmp}/dup.csv"], r"dup.csv: duplicate column name\(s\) \['text'\]"),
    ("class without training rows", ['classifier.labels=["no","yes","other"]'],
     r"class 'other' of classifier.labels has no training rows"),
    ("multi-token verbalizer", ['classifier.verbalizers={"no": xqzvwpl}'],
     r"classifier.verbalizers: each class must map to exactly one token, but: 'no' -> 'xqzvwpl' tokenises as"),
    ("max_length too small for the prompt", ["classifier.max_length=8"],
     r"classifier.max_length: max_length=8 leaves no room for the text"),
    ("mesh does not divide the devices", ["mesh.data=2"], r"mesh: mesh data=2xfsdp=1xtensor=1 needs a multiple of 2"),
    ("unknown model", ["model.name=random:nope"], r"random:nope: "),
    ("name with a slash", ["name=a/b"], r"name: got 'a/b'; must be a plain directory name"),
    ("resume and overwrite", ["resume=true", "overwrite=true"], r"overwrite: got True; must be false when resume=true"),
    ("rerun into a finished run", ["name=done"],
     r"run dir .*done already holds a run .*; pass resume=true to continue it, overwrite=true to replace it"),
    ("resume with another LoRA config", ["name=done", "resume=true", "lora.rank=4"],
     r"done/checkpoints was written by a different config; .*lora.rank: 2 -> 4"),
    ("overwrite with a missing data file", ["name=done", "overwrite=true", "data.source={tmp}/nope.csv"],
     r"data file '.*nope.csv' does not exist"),
]


@pytest.mark.parametrize("overrides, message", [p[1:] for p in CLI_PROBES], ids=[p[0] for p in CLI_PROBES])
@pytest.mark.slow
def test_cli_mistake_is_one_line_exit_2_and_leaves_the_disk_unchanged(setup, overrides, message):
    write(setup, "badlabel.csv", "text,label\nfine text,no\nother text,maybe\nmore text,yes\n" * 1
          + "".join(f"row {i},{'no' if i % 2 else 'yes'}\n" for i in range(20)))
    write(setup, "multiline.csv", 'text,label\na,no\n"two\nline\ntext",yes\nc,maybe\n'
          + "".join(f"row {i},{'no' if i % 2 else 'yes'}\n" for i in range(20)))
    write(setup, "dup.csv", "text,label,text\na,no,b\nc,yes,d\n")
    before = snapshot(setup)
    code, err = run_train(setup / "cfg.yaml", *[o.replace("{tmp}", str(setup)) for o in overrides])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert lines[-1].startswith("error: ") and len([x for x in lines if x.startswith("error:")]) == 1, err
    import re

    assert re.search(message, lines[-1]), lines[-1]
    assert snapshot(setup) == before  # no stub run dir, no lock, no temp file; `done` byte-identical


@pytest.mark.slow
def test_a_failed_rerun_leaves_a_finished_run_byte_identical(setup):
    done = setup / "runs" / "done"
    before = snapshot(done)
    assert {"config.yaml", "metrics.json", "classifier/lora.npz"} <= set(before)
    for overrides in (["name=done"], ["name=done", "data.source=/nonexistent.csv"],
                      ["name=done", "resume=true", "lora.rank=4"],
                      ["name=done", "overwrite=true", "classifier.max_length=8"]):
        code, err = run_train(setup / "cfg.yaml", *overrides)
        assert code == 2, (overrides, err)
        assert snapshot(done) == before, overrides
    assert sorted(p.name for p in (setup / "runs").iterdir()) == ["done"]  # nothing beside it either


@pytest.mark.slow
def test_overwrite_replaces_a_run_and_leaves_no_copy(setup):
    code, err = run_train(setup / "cfg.yaml", "name=replaced")
    assert code == 0, err
    old = json.loads((setup / "runs" / "replaced" / "metrics.json").read_text())
    code, err = run_train(setup / "cfg.yaml", "name=replaced", "overwrite=true", "train.learning_rate=0.002")
    assert code == 0, err
    run = setup / "runs" / "replaced"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["learning_rate"] == 0.002
    assert json.loads((run / "metrics.json").read_text())["history"] != old["history"]
    assert not [p.name for p in (setup / "runs").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_two_writers_into_one_run_dir_one_runs_the_other_gets_the_lock_error(setup):
    cmd = [sys.executable, str(ROOT / "launch/train.py"), "--config", str(setup / "cfg.yaml"), "--quiet",
           "name=race"]
    procs = [subprocess.Popen(cmd + [f"train.learning_rate={lr}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=subprocess_env()) for lr in (0.01, 0.02)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert "Traceback" not in loser and "orbax" not in loser.lower()
    assert f"error: run dir {setup / 'runs' / 'race'} is in use by pid " in loser, loser
    assert "Wait for that run to finish, or choose another name=" in loser
    from toolkit.config import CheckpointSection
    from toolkit.train.checkpoint import Checkpointer

    ck = Checkpointer(setup / "runs" / "race" / "checkpoints", CheckpointSection(keep=1))
    try:  # the winner's checkpoints are whole: the latest one reads back, config and all
        assert ck.latest_step() is not None and ck.read_meta()["config"]["name"] == "race"
    finally:
        ck.close()
    assert not lock_path(setup / "runs" / "race").exists()


def test_a_held_lock_names_its_holder_and_a_stale_one_is_taken_over(tmp_path):
    target = tmp_path / "runs" / "x"
    with DirLock(target, what="run dir", instead="Choose another name="):
        with pytest.raises(LockError, match=rf"run dir {target} is in use by pid {os.getpid()} on host "):
            DirLock(target, what="run dir").acquire()
    assert not lock_path(target).exists() and not (tmp_path / "runs").exists()  # the lock made runs/; it is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / "runs").mkdir()
    lock_path(target).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    notes: list[str] = []
    with DirLock(target, note=notes.append):
        assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and f"stale lock of {target} left by pid {dead.pid}" in notes[0]
    lock_path(target).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(LockError, match=r"pid 1 on host 'elsewhere'.*taken on another host"):
        DirLock(target).acquire()


@pytest.mark.slow
def test_export_refuses_a_held_target_and_cleans_a_killed_exports_temp_dir(setup, capsys):
    out = setup / "exports" / "x"
    with DirLock(out):
        assert cli.run(EXPORT_MAIN, ["--checkpoint", str(setup / "runs" / "done"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: export target {out} is in use by pid {os.getpid()}" in err and "Traceback" not in err
    assert not (setup / "exports").exists()  # the refused export made nothing
    stale = setup / "exports" / ".x.tmp-k1ll3d"
    stale.mkdir(parents=True)
    (stale / "half.bin").write_bytes(b"\0" * 10)
    assert cli.run(EXPORT_MAIN, ["--checkpoint", str(setup / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"note: removed {stale}" in err and "error: --checkpoint" in err
    assert not stale.exists() and not lock_path(out).exists() and list((setup / "exports").iterdir()) == []


def test_an_unexpected_exception_is_a_traceback_that_says_bug(capsys):
    def main(argv):
        raise RuntimeError("boom")

    assert cli.run(main, []) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "this is a bug in agile-toolkit" in err


# ------------------------------------------------------------------ API probes
@pytest.fixture(scope="module")
def clf(tiny_tokenizer):
    base = Gemma(get_config("tiny_gemma3"), runtime=Runtime(param_dtype="float32"), rngs=nnx.Rngs(0))
    c = AgileClassifier(LABELS, model=(base, tiny_tokenizer), verbalizers=VERBALIZERS, max_length=64,
                        progress=False, prompt={"instructions": "Classify"}, lora={"rank": 2, "targets": ("q", "v")})
    c._ensure_model()
    return c


def test_a_bare_string_is_not_a_list_of_texts(clf):
    with pytest.raises(DataError, match=r"predict\(texts\): texts: got a single string 'hello'; pass a list"):
        clf.predict("hello")
    texts, _ = _data(2)
    with pytest.raises(DataError, match=r"fit\(texts, labels\): labels: got a single string 'spam'"):
        clf.fit(texts, "spam")


@pytest.mark.parametrize("labels, message", [
    ("yes", r"labels: got 'yes'; must be a sequence of class-name strings"),
    ([0, 1], r"labels: got \[0, 1\]; must be class-name strings \(0 is a int\)"),
    (["a"], r"labels: got \['a'\]; must be at least two distinct"),
])
def test_labels_must_be_class_name_strings(labels, message):
    with pytest.raises(ValueError, match=message):
        AgileClassifier(labels)


def test_save_refuses_a_file_and_a_foreign_folder(clf, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes.txt'\): that is an existing file"):
        clf.save(file)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(FileExistsError, match=r"not a saved classifier \(no classifier.json\).*overwrite=True"):
        clf.save(folder)
    assert file.read_text() == "mine" and [p.name for p in folder.iterdir()] == ["cat.jpg"]
    clf.save(folder, overwrite=True)
    clf.save(folder)  # a saved classifier is replaced without asking
    assert (folder / "classifier.json").is_file() and not (folder / "cat.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]  # no .NAME.old, no temp dir


@pytest.mark.parametrize("name, damage, message", [
    ("lora.npz", lambda p: p.write_bytes(p.read_bytes()[:100]), r"lora.npz: not a readable .npz archive"),
    ("classifier.json", lambda p: p.write_text(p.read_text()[:50]), r"classifier.json: not valid JSON"),
    ("classifier.json", lambda p: p.write_text(p.read_text().replace('"learning_rate": 0.0005', '"learning_rate": -1')),
     r"classifier.json: spec.train.learning_rate: got -1(\.0)?; must be > 0"),
    ("classifier.json", lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                                           if k != "spec"})),
     r"classifier.json: key 'spec' is missing"),
])
def test_a_damaged_saved_file_is_named(clf, tmp_path, name, damage, message):
    saved = clf.save(tmp_path / "clf")
    damage(saved / name)
    with pytest.raises(SavedFileError, match=message) as e:
        AgileClassifier.load(saved, progress=False)
    assert str(saved / name) in str(e.value)


def test_duplicate_dataframe_columns_are_named():
    from toolkit.data.sources import from_dataframe

    df = pd.DataFrame([["a", "no", "b"]], columns=["text", "label", "text"])
    with pytest.raises(DataError, match=r"duplicate column name\(s\) \['text'\]"):
        from_dataframe(df)
    assert np.all(df.columns == ["text", "label", "text"])
