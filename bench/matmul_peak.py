"""This machine's practical FLOP/s ceiling: a large jitted fp32 matmul, timed.

CPUs have no datasheet peak for XLA, so the benchmarks that report a model-FLOP
utilisation (`first_fit.py`, `compare_codelab.py`) measure one in the same run
and divide by it. Best of `rounds` rounds of `reps` back-to-back (n x n) @ (n x n)
products, compilation excluded.
"""

from __future__ import annotations

import time


def matmul_peak_gflops(n: int = 2048, reps: int = 10, rounds: int = 3) -> float:
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()  # compile
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            r = f(a, b)
        r.block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * reps / best / 1e9
