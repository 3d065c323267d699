"""`LoRAConfig`, kept free of JAX so configs (and Ray drivers) can import it
without initialising an accelerator backend."""

from __future__ import annotations

import dataclasses

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Which projections get adapters and how big they are.

    The defaults are the toolkit's recipe, chosen by 5-fold cross-validation on
    ETHOS's training rows (bench/recipe_search.py): every attention and MLP
    projection at rank 8, alpha 16. Adapters on q/v alone scored ROC-AUC ~0.1
    lower there. `alpha=None` means alpha = rank (scale 1), keras-hub's
    convention, so the codelab's `enable_lora(rank=4)` is
    `LoRAConfig(rank=4, alpha=None, targets=("q", "v"))`.

    `dropout` acts on each adapter's input in training. The prompt's shared
    instruction head is computed once per batch (its keys and values feed every
    row), so it gets one dropout mask per batch, while each example's own tokens
    get their own: per-row head masks would cost the head's compute once per row.
    """

    rank: int = 8
    alpha: float | None = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank: got {self.rank}; must be >= 1, e.g. 8")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout: got {self.dropout}; must be in [0, 1), e.g. 0.05")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        bad = [t for t in targets if t not in TARGETS]
        if bad or not targets:
            raise ValueError(f"lora.targets: got {list(bad or targets)}; must be a non-empty list from {list(TARGETS)}")
        object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank
