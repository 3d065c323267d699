"""Ray Tune sweeps over the sharded trainer. Importing this package never imports JAX:
`config` (the sweep file), `tuner` (the driver) and `results` stay on the driver side;
`trial` holds the code that runs on Ray workers."""

from toolkit.sweep.config import SweepConfig, load_sweep

__all__ = ["SweepConfig", "load_sweep", "run_sweep"]


def run_sweep(*args, **kwargs):
    """See `toolkit.sweep.tuner.run_sweep` (imported lazily: it pulls in Ray)."""
    from toolkit.sweep.tuner import run_sweep as _run

    return _run(*args, **kwargs)
