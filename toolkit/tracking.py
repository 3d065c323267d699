"""Weights & Biases tracking, offline unless an API key is configured.

Only process 0 of a multi-host job logs; every other process gets a tracker
that does nothing, so callers never branch on the process index. Offline runs
are complete W&B runs on disk (`<dir>/wandb/offline-run-*`) that
`wandb sync` uploads later; nothing here needs the network.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Mapping

from toolkit.config import TrackingSection


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
        return auth is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """"auto" -> "online" with an API key, "offline" without; WANDB_MODE wins when set."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if _has_api_key() else "offline"


class Tracker:
    """One W&B run. `log` takes scalars; `log_images` PNG paths; `summary` final values."""

    def __init__(self, cfg: TrackingSection, *, name: str, directory: str | Path, config: Mapping[str, Any],
                 main_process: bool = True, job_type: str = "train"):
        self.mode = resolve_mode(cfg.mode) if main_process else "disabled"
        self.run = None
        if self.mode == "disabled":
            return
        import wandb

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, name=name,
                              tags=list(cfg.tags), config=dict(config), dir=str(directory), mode=self.mode,
                              job_type=job_type, reinit="finish_previous",
                              settings=wandb.Settings(console="off", x_disable_stats=True))
        self._wandb = wandb

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def log_images(self, images: Mapping[str, str | Path], step: int) -> None:
        if self.run is not None and images:
            self.run.log({k: self._wandb.Image(str(p)) for k, p in images.items() if Path(p).is_file()}, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                if isinstance(v, (int, float, str)) or v is None:
                    self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)
