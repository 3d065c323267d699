"""Multi-host start-up: one JAX process per host, joined before any device is touched.

`initialize` is the only place the toolkit calls `jax.distributed.initialize`.
Explicit settings (a coordinator address, the process count and this
process's id) win; otherwise JAX's own cluster detection runs where a
platform describes the job (Cloud TPU pods, SLURM, the JAX_COORDINATOR_ADDRESS
/ JAX_NUM_PROCESSES / JAX_PROCESS_ID environment); a plain single host skips
it, so the same entry point runs everywhere.
"""

from __future__ import annotations

import os

from toolkit.config import DistributedSection

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _platform_describes_job() -> bool:
    if all(os.environ.get(k) for k in _ENV):
        return True
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    # Multi-host Cloud TPU slices set these; a single-host TPU VM needs no initialisation.
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS")
    return bool(hosts and ("," in hosts or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS")))


def initialize(cfg: DistributedSection = DistributedSection()) -> bool:
    """Join the multi-process job if there is one; returns whether it did.

    Must run before anything else uses JAX devices. Safe to call twice.
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    if cfg.coordinator_address:
        if cfg.num_processes is None or cfg.process_id is None:
            raise ValueError("distributed.coordinator_address needs distributed.num_processes and "
                             "distributed.process_id too (or leave all three unset)")
        jax.distributed.initialize(cfg.coordinator_address, num_processes=cfg.num_processes,
                                   process_id=cfg.process_id,
                                   local_device_ids=list(cfg.local_device_ids) if cfg.local_device_ids else None)
        return True
    if _platform_describes_job():
        jax.distributed.initialize()
        return True
    return False

