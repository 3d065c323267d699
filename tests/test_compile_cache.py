"""toolkit.compile_cache: where the persistent cache goes, that a configured one wins,
and that compiled programs really land there (each case in a fresh process, since
the cache is process-wide JAX state set before the first compile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PROBE = """
import json, sys
import jax

from toolkit.compile_cache import enable_compilation_cache
used = enable_compilation_cache(min_compile_seconds=float(sys.argv[1]))
jax.jit(lambda x: x * 2 + 1)(jax.numpy.arange(3.0)).block_until_ready()
print(json.dumps({"used": used, "min": jax.config.jax_persistent_cache_min_compile_time_secs}))
"""


def _probe(env: dict[str, str], min_compile_seconds: float) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    r = subprocess.run([sys.executable, "-c", PROBE, str(min_compile_seconds)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**base, "PYTHONPATH": str(ROOT), **env})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_default_cache_is_under_the_toolkit_cache_and_receives_programs(tmp_path):
    out = _probe({"AGILE_TOOLKIT_CACHE": str(tmp_path / "root")}, 0)
    cache = tmp_path / "root" / "jax-compilation"
    assert out == {"used": str(cache), "min": 0.0}
    assert any(cache.iterdir()), "the jitted function was not written to the cache"


@pytest.mark.slow
def test_a_configured_cache_wins_and_keeps_its_own_settings(tmp_path):
    mine = tmp_path / "mine"
    out = _probe({"AGILE_TOOLKIT_CACHE": str(tmp_path / "root"), "JAX_COMPILATION_CACHE_DIR": str(mine),
                  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}, 60)  # ours would cache nothing
    assert out == {"used": str(mine), "min": 0.0}
    assert any(mine.iterdir()) and not (tmp_path / "root" / "jax-compilation").exists()
