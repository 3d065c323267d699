"""XLA flags set through the environment, before JAX starts: the fake host devices a
CPU mesh needs (`--xla_force_host_platform_device_count`).

One place that edits `XLA_FLAGS`, so that asking for N devices keeps the caller's other
flags (a test run's compile settings, a user's dump options) and replaces, rather than
repeats, an earlier device count. No JAX import here: it must run before JAX starts.
"""

from __future__ import annotations

import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_host_devices(flags: str, devices: int | None) -> str:
    """`flags` without any forced device count, plus `devices` of them when given."""
    kept = [f for f in flags.split() if not f.startswith(DEVICE_COUNT_FLAG + "=")]
    if devices is not None:
        kept.append(f"{DEVICE_COUNT_FLAG}={int(devices)}")
    return " ".join(kept)


def force_host_devices(devices: int | None) -> None:
    """Set this process's fake CPU device count (None: the default, one); a no-op once JAX
    has started, so call it first."""
    os.environ["XLA_FLAGS"] = with_host_devices(os.environ.get("XLA_FLAGS", ""), devices)
