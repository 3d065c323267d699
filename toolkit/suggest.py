"""What to label next: the texts of an unlabelled pool whose labels would teach the
classifier most (the agile loop: train, label what matters, train again).

Labels are the expensive part of a few-shot classifier, not compute, so each round
scores the whole pool once (the batched, packed scorer, which also hands back the
last-token hidden states at no extra cost) and ranks it:

- `uncertainty`: the smallest margin between the two most probable classes (for
  multi-label, the mean over categories of how close each "yes" is to 0.5);
- `entropy`: the highest entropy of the class probabilities, normalised to [0, 1];
- `diverse`: the most uncertain 4k candidates, then k of them spread out by greedy
  farthest-point selection on their (centred, normalised) hidden states, so one
  round does not spend its labels on near-duplicates of one confusing text;
- `random`: the control every strategy has to beat.

Texts in `exclude` (already labelled, or suggested in an earlier round) and repeats
within the pool are never suggested.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np

STRATEGIES = ("uncertainty", "entropy", "diverse", "random")
DIVERSE_POOL = 4  # diverse picks k among the DIVERSE_POOL * k most uncertain texts


class SuggestError(ValueError):
    """A pool, k or strategy `suggest` cannot work with; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Suggestions:
    """The chosen texts, most useful first: their positions in the pool given to `suggest`,
    why each was chosen, its uncertainty in [0, 1] and the classifier's probabilities."""

    indices: np.ndarray
    reasons: list[str]
    uncertainty: np.ndarray
    probs: np.ndarray  # (k, classes), or (k, categories) of "yes" for multi-label
    names: tuple[str, ...]  # the columns of `probs`

    def __len__(self) -> int:
        return len(self.indices)


def uncertainty(probs: np.ndarray, *, multilabel: bool = False, kind: str = "margin") -> np.ndarray:
    """Each row's uncertainty in [0, 1] (1: a coin flip)."""
    p = np.asarray(probs, np.float64)
    if multilabel:
        return (1.0 - np.abs(2.0 * p - 1.0)).mean(axis=1)
    if kind == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        return h / np.log(p.shape[1])
    top = np.sort(p, axis=1)
    return 1.0 - (top[:, -1] - top[:, -2])


def _pool(texts: Iterable[str], exclude: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """(the texts, positions of those that may be suggested: first occurrences not excluded)."""
    if isinstance(texts, str):
        raise SuggestError("suggest(texts): pass a list of texts, not one string")
    texts = [t for t in texts]
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise SuggestError(f"suggest(texts): text {bad} is empty or not a string ({texts[bad]!r})")
    if not texts:
        raise SuggestError("suggest(texts): the pool is empty; give the unlabelled texts to choose from")
    seen = set(exclude)
    keep = []
    for i, t in enumerate(texts):
        if t not in seen:
            seen.add(t)
            keep.append(i)
    return texts, np.asarray(keep, dtype=np.int64)


def _farthest_first(emb: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """k rows of `emb` by greedy farthest-point selection from row 0 (the most uncertain);
    (rows, each pick's cosine distance to the nearest earlier pick)."""
    x = emb - emb.mean(axis=0, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    chosen, dist = [0], [float("nan")]
    nearest = 1.0 - x @ x[0]
    for _ in range(1, k):
        nearest[chosen] = -np.inf
        j = int(np.argmax(nearest))
        chosen.append(j)
        dist.append(float(nearest[j]))
        nearest = np.minimum(nearest, 1.0 - x @ x[j])
    return chosen, dist


def suggest(clf: Any, texts: Iterable[str], k: int, *, strategy: str = "uncertainty",
            exclude: Iterable[str] = (), seed: int = 0) -> Suggestions:
    """The `k` texts of `texts` most worth labelling next with `clf` (fitted, loaded, or
    zero-shot); see the module docstring for the strategies."""
    if strategy not in STRATEGIES:
        raise SuggestError(f"suggest(strategy={strategy!r}): choose one of {', '.join(STRATEGIES)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SuggestError(f"suggest(k={k!r}): k is the number of texts to suggest, a positive integer")
    texts, open_ = _pool(texts, exclude)
    if k > len(open_):
        raise SuggestError(f"suggest(k={k}): the pool has only {len(open_)} text(s) not yet labelled or suggested "
                           f"(of {len(texts)}); ask for at most {len(open_)} or add texts to the pool")
    multilabel = hasattr(clf, "category_names")
    names = tuple(clf.category_names if multilabel else clf.class_names)
    if strategy == "random":
        rng = np.random.default_rng(seed)
        picked = rng.choice(open_, size=k, replace=False)
        probs, _ = clf._pool_scores([texts[i] for i in picked])
        u = uncertainty(probs, multilabel=multilabel)
        return Suggestions(picked, [f"random pick (seed {seed})"] * k, u, probs, names)
    candidates = [texts[i] for i in open_]
    probs, hidden = clf._pool_scores(candidates)
    u = uncertainty(probs, multilabel=multilabel, kind="entropy" if strategy == "entropy" else "margin")
    order = np.argsort(-u, kind="stable")
    if strategy == "diverse":
        top = order[: min(len(order), DIVERSE_POOL * k)]
        rows, dist = _farthest_first(hidden[top], k)
        picked_rows = top[rows]
        reasons = [_why(probs[r], u[r], names, multilabel, strategy)
                   + ("" if np.isnan(d) else f"; cosine distance {d:.3f} from the nearest earlier pick")
                   for r, d in zip(picked_rows, dist)]
    else:
        picked_rows = order[:k]
        reasons = [_why(probs[r], u[r], names, multilabel, strategy) for r in picked_rows]
    return Suggestions(open_[picked_rows], reasons, u[picked_rows], probs[picked_rows], names)


def _why(p: np.ndarray, u: float, names: tuple[str, ...], multilabel: bool, strategy: str) -> str:
    if multilabel:
        j = int(np.argmin(np.abs(p - 0.5)))
        return f"mean category uncertainty {u:.3f}; closest to even: {names[j]} (p={p[j]:.2f})"
    a, b = np.argsort(-p)[:2]
    if strategy == "entropy":
        return f"entropy {u:.3f} of the class probabilities; {names[a]} {p[a]:.2f} vs {names[b]} {p[b]:.2f}"
    return f"margin {p[a] - p[b]:.3f} between {names[a]} ({p[a]:.2f}) and {names[b]} ({p[b]:.2f})"
