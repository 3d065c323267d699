"""Orbax checkpoints of a training run: everything needed to continue bit-exactly.

A checkpoint holds the LoRA params, the optimizer state, the dropout RNG
streams, the step, the data position (epoch, batch within it), the history so
far and the run's config. The base model is never written: it is frozen and
re-read from its source. Orbax writes each step into a temporary directory
and renames it when complete (on `gs://` it writes a commit file instead), so
a crash mid-save leaves no checkpoint that looks finished (and the leftovers
are cleaned on the next start).

Kept: the last `keep` checkpoints plus the best one by `best_metric`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from toolkit.config import CheckpointSection

STATE, META = "state", "meta"


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode(tree: Any) -> Any:
    """Typed PRNG keys become their uint32 data (what Orbax can store)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _encode(tree))


def _decode(tree: Any, like: Any) -> Any:
    return jax.tree.map(lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
                        tree, like)


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be resumed from; the message says why."""


class Checkpointer:
    """Save / restore training state under `directory` (one sub-directory per step)."""

    def __init__(self, directory: Any, cfg: CheckpointSection = CheckpointSection()):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers as cm

        from toolkit.storage import is_uri, location

        # A URI (gs://...) stays one: Orbax writes there through tensorstore and commits a
        # step with a marker file, not a directory rename.
        self.directory = location(directory) if is_uri(directory) else Path(directory).absolute()
        self.cfg = cfg
        metric = cfg.best_metric

        def get_metric(m: Any) -> float:
            return float(m[metric])

        policy = cm.AnyPreservationPolicy([
            cm.LatestN(cfg.keep),
            cm.BestN(get_metric_fn=get_metric, reverse=cfg.best_mode == "min", n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        # `best_fn` is what makes Orbax write each step's metrics to disk and read them
        # back when a directory is reopened; without it `best_step()` is the latest
        # step and a reopened manager sees no metrics, so BestN drops the best.
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=False,
                                               create=True, cleanup_tmp_directories=True, best_fn=get_metric,
                                               best_mode=cfg.best_mode)
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, META))

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        """Write step `step`; `metrics` (with the best metric, when known) rank it for 'best'."""
        ocp = self._ocp
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
            if self.cfg.best_metric not in metrics:
                metrics = None
        self.manager.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(_encode(state)),
                                                           META: ocp.args.JsonSave(meta)}),
                          metrics=metrics, force=True)
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON side of `step` (default: the latest): step, epoch, history, run config."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no complete checkpoint")
        out = self.manager.restore(step, args=self._ocp.args.Composite(**{META: self._ocp.args.JsonRestore()}))
        return dict(out[META])

    def restore(self, like: dict[str, Any], step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state, meta) of `step` (default: the latest), placed like the arrays in `like`."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no complete checkpoint to resume from")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardRestore(_abstract(like)), META: ocp.args.JsonRestore()}))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{self.directory}/{step}: does not match this run's model or LoRA config "
                                  f"(was it written by another config?): {e}") from e
        return _decode(out[STATE], like), dict(out[META])

    def close(self) -> None:
        self.manager.close()

