"""Training callbacks that tests name in a run config (`callbacks=["agile_test_callbacks:InputLog"]`),
so sweep trials in Ray workers run them without production runs paying for them. Tests put
this folder on the subprocesses' PYTHONPATH (`conftest.subprocess_env`)."""

from __future__ import annotations

import json
import os
from typing import Any

from toolkit.train.callbacks import Callback


class InputLog(Callback):
    """Which rows this process fed at the first step of this session, in
    `<run dir>/inputs/rank-<rank>-pid-<pid>.json`: the evidence that the workers of one
    trial fed different shards of one global batch, and the pid a test kills."""

    def __init__(self, cfg: Any):
        self.directory, self.done = cfg.run_dir / "inputs", False

    def on_batch(self, fit: Any, batch: Any) -> None:
        if self.done:
            return
        import jax
        import numpy as np

        self.done = True
        try:
            import ray.train

            rank = ray.train.get_context().get_world_rank()
        except Exception:  # not in a Ray Train worker
            rank = jax.process_index()
        rows = [int(i) for i in np.asarray(batch.index)[np.asarray(batch.weights) > 0]]
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"rank-{rank}-pid-{os.getpid()}.json").write_text(json.dumps({
            "rank": rank, "process_index": jax.process_index(), "process_count": jax.process_count(),
            "step": fit.step, "device_count": jax.device_count(), "rows": rows}))


class FailAfterEpoch(Callback):
    """Raises at the end of epoch `$AGILE_TEST_FAIL_AFTER_EPOCH` (after that epoch's checkpoint:
    named after the run's own callbacks), so a test gets a run that died with resumable work."""

    def __init__(self, cfg: Any):
        self.epoch = int(os.environ.get("AGILE_TEST_FAIL_AFTER_EPOCH", "0"))

    def on_epoch_end(self, fit: Any, record: dict[str, Any]) -> None:
        if record.get("epoch") == self.epoch:
            raise RuntimeError(f"AGILE_TEST_FAIL_AFTER_EPOCH={self.epoch}: failing on purpose")
