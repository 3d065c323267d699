"""One round of the agile loop as a function: `agile-label` is its command line.

Reads the pool, leaves out what is labelled (`labeled` files) or was suggested in an
earlier round (the ledger), asks the classifier for the `k` texts most worth labelling
(`toolkit.suggest`), and writes them with the current prediction and an empty `label`
column. The CSV is written whole or not at all, before the ledger records its texts, so
a failed round changes nothing and a finished one is never repeated.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence


from toolkit.suggest import SuggestError

LEDGER = "suggested.jsonl"


@dataclasses.dataclass(frozen=True)
class LabelRound:
    path: Path  # the CSV to label
    rows: int
    skipped: int  # pool texts left out: labelled, suggested before, or repeated
    ledger: Path


def read_ledger(path: Path) -> set[str]:
    texts = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)
        except json.JSONDecodeError:
            text = None
        if not isinstance(text, str):
            raise SuggestError(f"{path}: line {n} is not a JSON string (the ledger holds one suggested text a "
                               "line); repair or remove the line")
        texts.add(text)
    return texts


def _classifier(classifier: Any, config: str | None, overrides: Sequence[str], progress: bool) -> Any:
    if classifier is not None:
        if not isinstance(classifier, (str, Path)):
            return classifier  # already in memory
        from toolkit.export.source import load_classifier

        return load_classifier(classifier, progress=progress, flag="--classifier")[0]
    from toolkit.classifier import AgileClassifier
    from toolkit.config import load_config

    cfg = load_config(config, list(overrides))
    return AgileClassifier.from_config(cfg, progress=progress, zero_shot=True)  # of the kind classifier.task says


def label_round(*, pool: str | Path, k: int, out: str | Path = "to_label.csv", classifier: Any = None,
                config: str | None = None, overrides: Sequence[str] = (), strategy: str = "uncertainty",
                labeled: Sequence[str | Path] = (), ledger: str | Path | None = None, text_column: str = "text",
                seed: int = 0, overwrite: bool = False, progress: bool = True) -> LabelRound:
    """Suggest `k` texts of `pool` to label next with `classifier` (a directory, or one in
    memory) or, for round 0, the zero-shot classifier of run `config`; see the module doc.
    Scoring a big pool takes minutes, so a classifier loaded here shows the scorer's
    progress bar (rate and ETA) unless `progress=False`; one given in memory keeps its own."""
    from toolkit.io_utils import atomic_path, write_text
    from toolkit.predict import predicted_column, read_texts

    out = Path(out)
    if (classifier is None) == (config is None):
        raise SuggestError("give the classifier to ask (--classifier) or, for round 0, a run config (--config)")
    if out.suffix.lower() != ".csv":
        raise SuggestError(f"--out {out}: write the texts to label as a .csv file")
    if out.exists() and not overwrite:
        raise SuggestError(f"--out {out} already exists (an earlier round's texts?); label and move it, or pass "
                           "--overwrite")
    ledger = Path(ledger) if ledger is not None else out.parent / LEDGER
    table = read_texts(pool, text_column)
    added = ["predicted", "uncertainty", "reason", "label"]
    exclude = read_ledger(ledger) if ledger.is_file() else set()
    for f in labeled:
        exclude |= set(read_texts(f, text_column)[text_column])
    clf = _classifier(classifier, config, overrides, progress)
    texts = table[text_column].tolist()
    s = clf.suggest(texts, k, strategy=strategy, exclude=exclude, seed=seed)
    clash = [c for c in [*added, *(f"p_{n}" for n in s.names)] if c in table.columns]
    if clash:
        raise SuggestError(f"{pool}: column {clash[0]!r} is one that agile-label writes; rename it in the pool")
    rows = table.iloc[s.indices].reset_index(drop=True)
    rows["predicted"] = predicted_column(clf, s.probs)
    for j, name in enumerate(s.names):
        rows[f"p_{name}"] = s.probs[:, j]
    rows["uncertainty"], rows["reason"], rows["label"] = s.uncertainty, s.reasons, ""
    with atomic_path(out) as tmp:
        rows.to_csv(tmp, index=False, lineterminator="\n")
    old = ledger.read_text(encoding="utf-8") if ledger.is_file() else ""
    new = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in rows[text_column])
    write_text(ledger, old + ("" if not old or old.endswith("\n") else "\n") + new)
    return LabelRound(out, len(rows), len(texts) - len(set(texts) - exclude), ledger)
