"""`LoRAConfig`, kept free of JAX so configs (and Ray drivers) can import it
without initialising an accelerator backend."""

from __future__ import annotations

import dataclasses
from typing import Any

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Which projections get adapters and how big they are.

    `alpha` defaults to `rank` (scale 1), keras-hub's default, so the
    codelab's `enable_lora(rank=4)` is `LoRAConfig(rank=4, targets=("q", "v"))`.
    """

    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        bad = [t for t in targets if t not in TARGETS]
        if bad or not targets:
            raise ValueError(f"LoRA targets {bad or targets!r} invalid; choose from {TARGETS}")
        object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoRAConfig":
        return cls(**d)
