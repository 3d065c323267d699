"""Reading keras-hub Gemma presets (config.json + model.weights.h5) without Keras.

Each tiny preset is built once per module with keras-hub itself (random
weights, norms included), then read back with `load_keras_preset` and compared
with the variables of the same preset loaded by keras-hub.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import keras_fixtures as kf
from toolkit.models.configs import get_config
from toolkit.weights.errors import WeightImportError
from toolkit.weights.keras_preset import keras_config_to_model_config, load_keras_preset

TINY = {"gemma": "tiny_gemma", "gemma2": "tiny_gemma2", "gemma3": "tiny_gemma3"}


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keras_presets")
    return {kind: kf.make_preset(kind, root) for kind in kf.KINDS}


@pytest.fixture(scope="module")
def bert_preset(tmp_path_factory) -> Path:
    return kf.make_bert_preset(tmp_path_factory.mktemp("bert"))


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _edit_config(preset: Path, **changes) -> None:
    path = preset / "config.json"
    data = json.loads(path.read_text())
    data["config"].update(changes)
    path.write_text(json.dumps(data))


def _keras_weights(backbone) -> dict[str, np.ndarray]:
    """Every keras-hub variable under our flat name, read through the keras layer objects."""
    out = {"embedder.input_embedding": backbone.get_layer("token_embedding").embeddings,
           "final_norm.scale": backbone.get_layer("final_normalization").scale}
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"decoder_block_{i}")
        p = f"layers.{i}"
        for ours, layer in [
            ("pre_attention_norm", block.pre_attention_norm),
            ("pre_ffw_norm", block.pre_ffw_norm),
            ("post_attention_norm", getattr(block, "post_attention_norm", None)),
            ("post_ffw_norm", getattr(block, "post_ffw_norm", None)),
            ("attn.q_norm", getattr(block.attention, "query_norm", None)),
            ("attn.k_norm", getattr(block.attention, "key_norm", None)),
        ]:
            if layer is not None:
                out[f"{p}.{ours}.scale"] = layer.scale
        for layer in kf.einsum_layers(block):
            out[f"{p}.{kf.KERAS_TO_OURS[layer.name]}.kernel"] = layer.kernel
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def _expected_shapes(cfg) -> dict[str, tuple[int, ...]]:
    E, H, K, D, M = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    shapes = {"embedder.input_embedding": (cfg.vocab_size, E), "final_norm.scale": (E,)}
    for i in range(cfg.num_layers):
        p = f"layers.{i}"
        shapes.update({
            f"{p}.pre_attention_norm.scale": (E,),
            f"{p}.attn.q_proj.kernel": (H, E, D),
            f"{p}.attn.k_proj.kernel": (K, E, D),
            f"{p}.attn.v_proj.kernel": (K, E, D),
            f"{p}.attn.o_proj.kernel": (H, D, E),
            f"{p}.pre_ffw_norm.scale": (E,),
            f"{p}.mlp.gate_proj.kernel": (E, M),
            f"{p}.mlp.up_proj.kernel": (E, M),
            f"{p}.mlp.down_proj.kernel": (M, E),
        })
        if cfg.use_qk_norm:
            shapes.update({f"{p}.attn.q_norm.scale": (D,), f"{p}.attn.k_norm.scale": (D,)})
        if cfg.use_post_attn_norm:
            shapes[f"{p}.post_attention_norm.scale"] = (E,)
        if cfg.use_post_ffw_norm:
            shapes[f"{p}.post_ffw_norm.scale"] = (E,)
    return shapes


# ---------------------------------------------------------------------------
# Reading the three families


@pytest.mark.parametrize("kind", kf.KINDS)
@pytest.mark.slow
def test_config_matches_the_tiny_named_architecture(presets, kind):
    cfg, _, tokenizer = load_keras_preset(presets[kind])
    want = get_config(TINY[kind])
    assert cfg.name == kind
    assert cfg.family == want.family
    # Same architecture as the hand-written tiny config; the keras config has no max length.
    assert cfg.replace(name=want.name, max_seq_len=want.max_seq_len) == want
    assert tokenizer == presets[kind] / "assets" / "tokenizer" / "vocabulary.spm"
    assert tokenizer.is_file()


@pytest.mark.parametrize("kind", kf.KINDS)
def test_every_tensor_has_our_name_shape_and_keras_value(presets, kind):
    cfg, params, _ = load_keras_preset(presets[kind])
    assert {k: v.shape for k, v in params.items()} == _expected_shapes(cfg)
    assert all(v.dtype == np.float32 for v in params.values())
    keras_weights = _keras_weights(kf.load_backbone(presets[kind]))
    assert set(keras_weights) == set(params)
    for key, value in keras_weights.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)
    # The fixture really randomised the norms (keras initialises them to 0).
    assert np.abs(params["layers.0.pre_attention_norm.scale"]).max() > 0.1


@pytest.mark.parametrize("kind", kf.KINDS)
def test_local_global_layers_and_rope_follow_keras(presets, kind):
    cfg, _, _ = load_keras_preset(presets[kind])
    backbone = kf.load_backbone(presets[kind])
    for i, block in enumerate(backbone.transformer_layers):
        assert cfg.is_global_layer(i) == (not block.use_sliding_window_attention), i
        if kind == "gemma3":
            base = cfg.rope_base_global if cfg.is_global_layer(i) else cfg.rope_base_local
            assert block.attention.rope_wavelength == base


def test_rope_scaling_and_query_scalar_come_from_the_config():
    raw = {"vocabulary_size": 8, "image_size": 16, "num_layers": 6, "num_query_heads": 4,
           "num_key_value_heads": 1, "hidden_dim": 48, "intermediate_dim": 64, "head_dim": 8,
           "query_head_dim_normalize": False, "use_sliding_window_attention": True,
           "sliding_window_size": 16, "global_rope_scaling_factor": 8.0, "vision_encoder": None}
    cfg = keras_config_to_model_config({"class_name": "Gemma3Backbone", "config": raw})
    assert cfg.query_pre_attn_scalar == 48 // 4
    assert (cfg.rope_scale_global, cfg.rope_scale_local) == (8.0, 1.0)
    assert (cfg.rope_base_global, cfg.rope_base_local) == (1_000_000.0, 10_000.0)
    assert cfg.mlp_dim == 64 and cfg.sliding_window_pattern == 6 and cfg.max_seq_len == 131_072


def test_old_gemma_config_without_gemma2_keys_is_gemma1():
    raw = {"vocabulary_size": 8, "num_layers": 1, "num_query_heads": 2, "num_key_value_heads": 1,
           "hidden_dim": 8, "intermediate_dim": 32, "head_dim": 4}
    cfg = keras_config_to_model_config({"class_name": "GemmaBackbone", "config": raw})
    assert cfg.family == "gemma" and cfg.mlp_dim == 16 and cfg.sliding_window_pattern is None


def test_bfloat16_sharded_preset_is_decoded(tmp_path):
    import keras_hub

    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=16, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=8, intermediate_dim=16, head_dim=4, dtype="bfloat16")
    kf.randomize(backbone, seed=3)
    backbone.save_to_preset(str(tmp_path / "bf16"), max_shard_size=5e-7)  # ~540-byte shards
    assert (tmp_path / "bf16" / "model.weights.json").is_file()
    assert not (tmp_path / "bf16" / "model.weights.h5").exists()
    _, params, tokenizer = load_keras_preset(tmp_path / "bf16")
    assert tokenizer is None
    for key, value in _keras_weights(backbone).items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)


@pytest.mark.slow
def test_lora_is_merged_into_the_kernel_when_keras_saves(presets, tmp_path):
    """Keras writes `kernel + A @ B` to model.weights.h5, never the adapters themselves."""
    backbone = kf.load_backbone(presets["gemma"])
    base = np.asarray(backbone.get_layer("decoder_block_0").attention.query_dense._kernel)
    lora = kf.enable_keras_lora(backbone, rank=2, targets=("q", "v"))
    backbone.save_to_preset(str(tmp_path / "merged"))
    _, params, _ = load_keras_preset(tmp_path / "merged")
    assert not any("lora" in k for k in params)
    a, b = lora["layers.0.attn.q_proj.lora_a"], lora["layers.0.attn.q_proj.lora_b"]
    np.testing.assert_allclose(params["layers.0.attn.q_proj.kernel"], base + a @ b, atol=1e-6)


# ---------------------------------------------------------------------------
# Bad input: every error names the file and the tensor or field


def test_missing_directory(tmp_path):
    with pytest.raises(WeightImportError, match="does not exist"):
        load_keras_preset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WeightImportError, match="not a directory"):
        load_keras_preset(tmp_path / "file")


def test_missing_config(presets, tmp_path):
    preset = _copy(presets["gemma"], tmp_path)
    (preset / "config.json").unlink()
    with pytest.raises(WeightImportError, match=r"config\.json is missing"):
        load_keras_preset(preset)


def test_missing_weights(presets, tmp_path):
    preset = _copy(presets["gemma"], tmp_path)
    (preset / "model.weights.h5").unlink()
    with pytest.raises(WeightImportError, match=r"model\.weights\.h5 is missing"):
        load_keras_preset(preset)


def test_corrupt_json(presets, tmp_path):
    preset = _copy(presets["gemma"], tmp_path)
    (preset / "config.json").write_text('{"class_name": "GemmaBackbone", "config": {')
    with pytest.raises(WeightImportError, match=r"config\.json is not valid JSON"):
        load_keras_preset(preset)


def test_truncated_h5(presets, tmp_path):
    preset = _copy(presets["gemma2"], tmp_path)
    h5 = preset / "model.weights.h5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(WeightImportError, match=r"model\.weights\.h5") as e:
        load_keras_preset(preset)
    assert "corrupt" in str(e.value)


def test_missing_tensor_is_named(presets, tmp_path):
    preset = _copy(presets["gemma3"], tmp_path)
    with h5py.File(preset / "model.weights.h5", "a") as f:
        del f["layers/gemma3_decoder_block_2/attention/key_norm/vars/0"]
    with pytest.raises(WeightImportError) as e:
        load_keras_preset(preset)
    msg = str(e.value)
    assert "model.weights.h5" in msg and "gemma3_decoder_block_2/attention/key_norm" in msg
    assert "layers.2.attn.k_norm.scale" in msg and "missing" in msg


@pytest.mark.slow
def test_non_gemma_backbone(bert_preset):
    with pytest.raises(WeightImportError, match=r"config\.json.*'BertBackbone' is not a Gemma backbone"):
        load_keras_preset(bert_preset)


def test_edited_class_name(presets, tmp_path):
    preset = _copy(presets["gemma"], tmp_path)
    path = preset / "config.json"
    data = json.loads(path.read_text())
    data["class_name"] = "LlamaBackbone"
    path.write_text(json.dumps(data))
    with pytest.raises(WeightImportError, match="'LlamaBackbone' is not a Gemma backbone"):
        load_keras_preset(preset)


def test_shape_that_does_not_fit_the_config(presets, tmp_path):
    preset = _copy(presets["gemma2"], tmp_path)
    _edit_config(preset, num_key_value_heads=4)
    with pytest.raises(WeightImportError) as e:
        load_keras_preset(preset)
    msg = str(e.value)
    assert "model.weights.h5" in msg
    assert "layers/gemma_decoder_block/attention/key_dense/vars/0" in msg and "layers.0.attn.k_proj.kernel" in msg
    assert "shape (2, 32, 8), expected (4, 32, 8)" in msg


def test_config_missing_a_field(presets, tmp_path):
    preset = _copy(presets["gemma"], tmp_path)
    path = preset / "config.json"
    data = json.loads(path.read_text())
    del data["config"]["head_dim"]
    path.write_text(json.dumps(data))
    with pytest.raises(WeightImportError, match=r"config\.json.*'head_dim'"):
        load_keras_preset(preset)


def test_weights_the_config_does_not_use(presets, tmp_path):
    preset = _copy(presets["gemma2"], tmp_path)
    _edit_config(preset, use_post_ffw_norm=False)
    with pytest.raises(WeightImportError, match=r"post_ffw_norm.*not used by the architecture"):
        load_keras_preset(preset)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"vision_encoder": {"class_name": "Gemma3VisionEncoder", "config": {}}}, "vision encoder"),
        ({"is_embedding_model": True}, "embedding model"),
    ],
)
def test_unsupported_gemma3_variants(presets, tmp_path, change, match):
    preset = _copy(presets["gemma3"], tmp_path)
    _edit_config(preset, **change)
    with pytest.raises(WeightImportError, match=match):
        load_keras_preset(preset)
