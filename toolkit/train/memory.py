"""Peak memory of a run, for reports that compare model sizes.

Accelerators report their allocator's peak; on CPU the arrays live in host RAM,
so the process's peak resident set is the honest figure.
"""

from __future__ import annotations

import resource
import sys


def peak_memory_gb() -> tuple[float | None, str]:
    """(peak GB, what was measured): the largest device's peak, or the process's peak RSS on CPU."""
    import jax

    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats() or {}
        except Exception:  # some backends raise instead of returning None
            stats = {}
        if "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    if peaks:
        return max(peaks) / 1e9, f"{jax.devices()[0].platform} peak_bytes_in_use (largest device)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9, "host peak RSS (process)"
