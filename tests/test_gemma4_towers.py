"""A Gemma 4 preset with vision and audio encoders loads its text decoder (issue 21).

The preset is keras-hub's own `save_to_preset` of a tiny random `Gemma4Backbone` with a
tiny vision and a tiny audio encoder (`keras_fixtures`, kind "gemma4_towers"). Loaded
through our public loader (`load_pretrained`), it must: give keras-hub's logits for the
same backbone fed text only (its multimodal graph with no image and no audio), fp32 to
1e-4; say in exactly one line on stderr that both encoders are left out; and load no
tower weight (our flat names are exactly those of a text-only backbone of that config).
"""

from __future__ import annotations

import contextlib
import io
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import keras_fixtures as kf
from toolkit.models.configs import Runtime
from toolkit.models.gemma import flat_state
from toolkit.weights.keras_gemma4 import backbone_kwargs, params_from_backbone
from toolkit.weights.keras_preset import load_keras_preset
from toolkit.weights.loader import load_pretrained

# keras-hub's audio encoder, fed no clips, warns of a softmax over its empty axis.
# 1e-4 against keras-hub, which rounding at the suite's -O0 crosses: compiled with XLA's defaults.
pytestmark = [pytest.mark.slow, pytest.mark.xla_optimized, pytest.mark.filterwarnings("ignore:You are using a softmax over axis:UserWarning")]

ATOL = 1e-4
FP32 = Runtime(param_dtype="float32", dtype="float32")
# Right-padded rows longer than the sliding window (4); the second has three padding positions.
TOKENS = np.array([[2, 17, 250, 33, 48, 99, 7, 301, 12, 5],
                   [2, 400, 3, 88, 123, 9, 61, 0, 0, 0]], dtype=np.int32)
MASK = np.array([[1] * 10, [1] * 7 + [0] * 3], dtype=np.int32)


def keras_text_only_logits(backbone, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """keras-hub's logits for text alone through a backbone that has encoders: the inputs its
    preprocessor gives a prompt without media (zero images, zero audio clips, empty masks)."""
    b, t = tokens.shape
    inputs = {"token_ids": tokens, "padding_mask": mask,
              "position_ids": np.ascontiguousarray(np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)))}
    if backbone.vision_encoder is not None:
        patch_dim = 3 * backbone.vision_encoder.patch_size ** 2
        inputs.update(pixel_values=np.zeros((b, 0, 1, patch_dim), np.float32),
                      pixel_position_ids=np.zeros((b, 0, 1, 2), np.int32),
                      vision_indices=np.zeros((b, 0), np.int32), vision_mask=np.zeros((b, t), np.int32))
    if backbone.audio_encoder is not None:
        inputs.update(audio_mel=np.zeros((b, 0, 1, backbone.audio_encoder.input_feat_size), np.float32),
                      audio_mel_mask=np.zeros((b, 0, 1), np.int32),
                      audio_indices=np.zeros((b, 0), np.int32), audio_mask=np.zeros((b, t), np.int32))
    x = backbone(inputs)
    return np.asarray(backbone.token_embedding(x, reverse=True), np.float32)  # applies the final soft-cap


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """(preset dir, its keras backbone, keras text-only logits, our model, our stderr while loading)."""
    preset = kf.make_preset("gemma4_towers", tmp_path_factory.mktemp("gemma4_towers"))
    backbone = kf.load_backbone(preset)
    assert backbone.vision_encoder is not None and backbone.audio_encoder is not None
    expected = keras_text_only_logits(backbone, TOKENS, MASK)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        model, _ = load_pretrained(preset, runtime=FP32)
    return preset, backbone, expected, model, err.getvalue()


def test_text_decoder_matches_keras_hub_text_only(towers):
    _, _, expected, model, _ = towers
    ours = np.asarray(nnx.jit(lambda m, t, k: m(t, k))(model, jnp.asarray(TOKENS), jnp.asarray(MASK)), np.float32)
    assert ours.shape == expected.shape
    keep = MASK.astype(bool)  # padded positions are unspecified
    np.testing.assert_allclose(ours[keep], expected[keep], rtol=0, atol=ATOL)


def test_one_line_says_both_towers_are_left_out(towers):
    preset, _, _, _, err = towers
    lines = [ln for ln in err.splitlines() if "encoder" in ln]
    assert lines == [f"{preset}: loading the text decoder of this Gemma 4 preset; its vision and audio "
                     "encoders are not used"], err


def test_no_tower_weight_is_loaded(towers):
    preset, backbone, _, model, _ = towers
    config, params, _ = load_keras_preset(preset)
    import keras_hub

    text_only = keras_hub.models.Gemma4Backbone(**backbone_kwargs(config), dtype="float32")
    want = {k: v.shape for k, v in params_from_backbone(text_only, config).items()}
    assert {k: v.shape for k, v in params.items()} == want
    assert not [k for k in params if any(w in k for w in ("vision", "audio", "image", "patch", "conformer"))]
    # Every backbone weight is one we read or a tower's, and the model holds exactly ours.
    tower_size = sum(int(np.prod(v.shape)) for enc in (backbone.vision_encoder, backbone.audio_encoder)
                     for v in enc.weights)
    assert sum(v.size for v in params.values()) + tower_size == sum(int(np.prod(v.shape)) for v in backbone.weights)
    assert {k: tuple(v.shape) for k, v in flat_state(model).items()} == {k: tuple(v) for k, v in want.items()}
