"""Numerical parity with keras-hub: the same tiny random preset through keras-hub
and through our NNX Gemma (built from `load_keras_preset`'s flat dict) gives
the same full-vocabulary logits, with and without LoRA."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import keras_fixtures as kf
from toolkit.models.build import from_params
from toolkit.models.configs import Runtime
from toolkit.models.lora import LoRAConfig
from toolkit.weights.keras_preset import load_keras_preset

ATOL = 1e-4
FP32 = Runtime(param_dtype="float32", dtype="float32")

# Two right-padded sequences, both longer than the sliding window (4) so local
# layers really drop keys; the second has three padding positions.
TOKENS = np.array(
    [
        [2, 17, 250, 33, 48, 99, 7, 301, 12, 5],
        [2, 400, 3, 88, 123, 9, 61, 0, 0, 0],
    ],
    dtype=np.int32,
)
MASK = np.array([[1] * 10, [1] * 7 + [0] * 3], dtype=np.int32)


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity_presets")
    return {kind: kf.make_preset(kind, root) for kind in kf.KINDS}


def _ours(preset: Path, lora_params=None, lora: LoRAConfig | None = None) -> np.ndarray:
    cfg, params, _ = load_keras_preset(preset)
    params = dict(params, **(lora_params or {}))
    model = from_params(cfg, params, runtime=FP32, lora=lora, source=str(preset))
    return np.asarray(model(jnp.asarray(TOKENS), jnp.asarray(MASK.astype(bool))), dtype=np.float32)


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    real = MASK.astype(bool)
    assert ours.shape == theirs.shape == (*TOKENS.shape, kf.VOCAB_SIZE)
    np.testing.assert_allclose(ours[real], theirs[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", kf.KINDS)
@pytest.mark.slow
def test_logits_match_keras_hub(presets, kind):
    theirs = kf.keras_logits(presets[kind], TOKENS, MASK)
    ours = _ours(presets[kind])
    # Sanity: the logits are not trivially small, so 1e-4 is a real bound.
    assert np.abs(theirs[MASK.astype(bool)]).std() > 0.1
    _assert_close(ours, theirs)


@pytest.mark.parametrize("kind", kf.KINDS)
@pytest.mark.slow
def test_logits_match_keras_hub_with_lora(presets, kind):
    targets = ("q", "k", "v", "o", "gate", "up", "down")
    backbone = kf.load_backbone(presets[kind])
    base = kf.keras_logits(backbone, TOKENS, MASK)
    lora_params = kf.enable_keras_lora(backbone, rank=3, targets=targets, seed=7)
    theirs = kf.keras_logits(backbone, TOKENS, MASK)
    # The adapters change the output, so matching below is not vacuous.
    assert np.abs(theirs - base)[MASK.astype(bool)].max() > 1e-2
    ours = _ours(presets[kind], lora_params, LoRAConfig(rank=3, alpha=None, targets=targets))
    _assert_close(ours, theirs)
