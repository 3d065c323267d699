"""The agile loop: `suggest` picks what to label next, and `agile-label` runs one round of it
(round 0 zero-shot from a run config, then from the trained classifier) without ever
suggesting a text twice or one already labelled."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import HAM, LABELS, SPAM, VERBALIZERS, run_cli, train_cli
from toolkit.classifier import AgileClassifier
from toolkit.label_round import label_round
from toolkit.suggest import SuggestError, uncertainty


@pytest.fixture(scope="module")
def zero_shot() -> AgileClassifier:
    return AgileClassifier(LABELS, model="random:tiny_gemma", verbalizers=VERBALIZERS, max_length=48,
                           progress=False, param_dtype="float32", zero_shot=True)


def _pool(n: int) -> list[str]:
    return [f"{(SPAM if i % 2 else HAM)[i % 3]} number {i}" for i in range(n)]


def test_uncertainty_ranks_the_decision_boundary_first():
    probs = np.array([[0.9, 0.1], [0.52, 0.48], [0.3, 0.7], [0.5, 0.5], [0.99, 0.01]])
    assert list(np.argsort(-uncertainty(probs))) == [3, 1, 2, 0, 4]
    assert uncertainty(probs, kind="entropy")[3] == pytest.approx(1.0)
    yes = np.array([[0.5, 0.9], [0.1, 0.1], [0.6, 0.45]])  # multi-label: mean over categories
    np.testing.assert_allclose(uncertainty(yes, multilabel=True), [0.6, 0.2, 0.85])


def test_suggest_takes_the_least_certain_texts_of_the_pool(zero_shot):
    pool = _pool(30)
    probs = zero_shot.predict_proba(pool)
    margin = np.abs(probs[:, 0] - probs[:, 1])
    s = zero_shot.suggest(pool, 5)
    assert list(s.indices) == list(np.argsort(margin, kind="stable")[:5])
    assert all(r.startswith("margin ") for r in s.reasons)
    np.testing.assert_allclose(s.probs, probs[s.indices], atol=1e-6)


@pytest.mark.parametrize("strategy", ["uncertainty", "entropy", "diverse", "random"])
def test_no_strategy_suggests_a_labelled_or_repeated_text(zero_shot, strategy):
    pool = _pool(20)
    pool += pool[:6]  # repeats
    labelled = set(pool[:8])
    s = zero_shot.suggest(pool, 10, strategy=strategy, exclude=labelled, seed=3)
    chosen = [pool[i] for i in s.indices]
    assert len(chosen) == len(set(chosen)) == 10 and not set(chosen) & labelled
    assert all(i < 20 for i in s.indices)  # a repeat is never picked (its first occurrence is the pool's)


def test_diverse_spreads_its_picks_over_the_most_uncertain(zero_shot):
    pool = _pool(40)
    s = zero_shot.suggest(pool, 4, strategy="diverse")
    top = set(np.argsort(-uncertainty(zero_shot.predict_proba(pool)), kind="stable")[:16])
    assert set(s.indices) <= top
    assert "cosine distance" in s.reasons[1]


@pytest.mark.parametrize("pool, k, words", [
    ([], 3, "the pool is empty"),
    (["one text", "two texts"], 3, "the pool has only 2 text(s) not yet labelled or suggested"),
    (["one text", ""], 1, "text 1 is empty"),
    (["a", "b"], 0, "a positive integer"),
])
def test_bad_suggest_arguments_are_named(zero_shot, pool, k, words):
    with pytest.raises(SuggestError, match=None) as e:
        zero_shot.suggest(pool, k)
    assert words in str(e.value)


def _label(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    from toolkit.commands.label import main

    with contextlib.chdir(cwd):
        return run_cli(main, *args)


CONFIG = """name: loop
output_dir: {out}
model: {{name: "random:tiny_gemma", param_dtype: float32}}
data: {{source: {data}, test_fraction: 0.25}}
classifier: {{labels: [spam, ham], verbalizers: {{spam: a, ham: in}}, max_length: 48}}
train: {{epochs: 1, batch_size: 4, learning_rate: 0.01}}
tracking: {{mode: disabled}}
checkpoint: {{enabled: false}}
"""


@pytest.mark.slow
def test_a_round_trip_through_label_and_train(tmp_path):
    pd.DataFrame({"text": _pool(40)}).to_csv(tmp_path / "pool.csv", index=False)
    start = _pool(40)[:8]
    pd.DataFrame({"text": start, "label": ["ham" if i % 2 == 0 else "spam" for i in range(8)]}).to_csv(
        tmp_path / "labeled.csv", index=False)
    (tmp_path / "run.yaml").write_text(CONFIG.format(out=tmp_path / "runs", data=tmp_path / "labeled.csv"))
    # Round 0: the zero-shot classifier of the run config.
    r = _label("--config", "run.yaml", "--pool", "pool.csv", "--labeled", "labeled.csv", "--k", "6",
               "--out", "round0.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # Scoring the pool shows its progress: batches done of all, elapsed < ETA, the rate.
    assert re.search(r"score: +100%.*\| *(\d+)/\1 \[[0-9:]+<[0-9:]+, +[0-9.]+ *(batch/s|s/batch)\]", r.stderr), r.stderr[-2000:]
    round0 = pd.read_csv(tmp_path / "round0.csv", keep_default_na=False)
    assert list(round0.columns) == ["text", "predicted", "p_spam", "p_ham", "uncertainty", "reason", "label"]
    assert len(round0) == 6 and not set(round0["text"]) & set(start) and (round0["label"] == "").all()
    # The expert labels them; they join the training file; train again.
    labels = {t: ("spam" if int(t.rsplit(" ", 1)[1]) % 2 else "ham") for t in round0["text"]}
    grown = pd.concat([pd.read_csv(tmp_path / "labeled.csv"),
                       round0.assign(label=round0["text"].map(labels))[["text", "label"]]])
    grown.to_csv(tmp_path / "labeled.csv", index=False)
    with contextlib.chdir(tmp_path):
        t = train_cli(Path("run.yaml"))
    assert t.returncode == 0, t.stderr[-3000:]
    # Round 1: the trained classifier; nothing labelled or suggested before comes back.
    r = _label("--classifier", str(tmp_path / "runs" / "loop" / "classifier"), "--pool", "pool.csv",
               "--labeled", "labeled.csv", "--k", "6", "--out", "round1.csv", "--strategy", "diverse", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    round1 = pd.read_csv(tmp_path / "round1.csv", keep_default_na=False)
    assert len(round1) == 6 and not set(round1["text"]) & (set(grown["text"]) | set(round0["text"]))
    ledger = [json.loads(line) for line in (tmp_path / "suggested.jsonl").read_text().splitlines()]
    assert ledger == list(round0["text"]) + list(round1["text"])
    # The next fit can start from this round's adapters (--continue). At a learning rate of ~0 it
    # ends where round 1 ended; a fresh start would end at B = 0 (the zero-shot model).
    first = np.load(tmp_path / "runs" / "loop" / "classifier" / "lora.npz")
    with contextlib.chdir(tmp_path):
        t = train_cli(Path("run.yaml"), "name=loop2", "train.learning_rate=0.000000001", "--continue", "runs/loop")
    assert t.returncode == 0, t.stderr[-3000:]
    second = np.load(tmp_path / "runs" / "loop2" / "classifier" / "lora.npz")
    assert set(first) == set(second) and any(np.abs(first[k]).max() > 1e-3 for k in first if "lora_b" in k)
    assert all(np.allclose(first[k], second[k], atol=1e-6) for k in first)
    # Adapters of another shape are named, and the refused run leaves no dir behind.
    with contextlib.chdir(tmp_path):
        t = train_cli(Path("run.yaml"), "name=loop3", "lora.rank=2", "--continue", "runs/loop")
    assert t.returncode == 2 and len(t.stderr.strip().splitlines()) == 1, t.stderr
    assert "warm_start" in t.stderr and "lora" in t.stderr and "train from scratch" in t.stderr
    assert not (tmp_path / "runs" / "loop3").exists()
    with contextlib.chdir(tmp_path):
        t = train_cli(Path("run.yaml"), "name=loop3", "--continue", "pool.csv")
    assert t.returncode == 2 and "warm_start: pool.csv holds no saved classifier" in t.stderr, t.stderr
    assert not (tmp_path / "runs" / "loop3").exists()
    # A third round to the same --out is refused before any model loads: the expert's file is never replaced.
    before = (tmp_path / "round1.csv").read_bytes()
    with pytest.raises(SuggestError, match="round1.csv already exists"):
        label_round(classifier=tmp_path / "runs" / "loop" / "classifier", pool=tmp_path / "pool.csv", k=2,
                    out=tmp_path / "round1.csv")
    assert (tmp_path / "round1.csv").read_bytes() == before


@pytest.mark.parametrize("pool, k, words", [
    ("text\n", "2", "has a header but no rows"),
    ("text\na\nb\n", "5", "the pool has only 2 text(s)"),
    ("body\na\nb\n", "1", "no column 'text'"),
])
def test_bad_label_inputs_write_nothing(tmp_path, pool, k, words):
    (tmp_path / "pool.csv").write_text(pool)
    (tmp_path / "run.yaml").write_text(CONFIG.format(out=tmp_path / "runs", data=tmp_path / "pool.csv"))
    r = _label("--config", "run.yaml", "--pool", "pool.csv", "--k", k, "--out", "to_label.csv", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    message = r.stderr.strip().splitlines()
    assert len(message) == 1 and words in message[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.csv", "run.yaml"]
