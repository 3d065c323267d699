"""JAX's persistent compilation cache, switched on by the entry points.

On a 2-core CPU a fit of a few hundred examples spends most of its wall time
compiling: one train step per length bucket (~35 s each for the 270M) and one
scorer per padded width (~6 s each). Runs of the same model and shapes (a
rerun, the next sweep trial, a restarted worker, the next fold) read those
programs back instead (measured on the 270M: a scorer 6.1 s -> 1.2 s, a train
step 35 s -> 20 s). The library never turns it on by itself, because it is
process-wide JAX state; `launch/train.py`, sweep trials and
`bench/recipe_search.py` do (not `bench/train_scale.py`, which times compiling).
"""

from __future__ import annotations

from pathlib import Path


def enable_compilation_cache(path: str | Path | None = None, min_compile_seconds: float = 1.0) -> str:
    """Use `path` (default `$AGILE_TOOLKIT_CACHE/jax-compilation`) unless a cache is
    already configured (e.g. `JAX_COMPILATION_CACHE_DIR`); returns the directory in use."""
    import jax

    from toolkit.paths import cache_root

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(path or cache_root() / "jax-compilation"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    return jax.config.jax_compilation_cache_dir
