"""Hugging Face transformers checkpoints: tiny random Gemma 1/2/3 models built and saved by
transformers itself load into our model with the same logits, and our `--format hf`
export loads back into transformers with the same logits as ours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import keras_fixtures as kf
from conftest import LABELS, VERBALIZERS, no_temp_files
from toolkit.classifier import AgileClassifier
from toolkit.export import export
from toolkit.models.configs import Runtime, get_config
from toolkit.models.build import from_params
from toolkit.weights.errors import WeightImportError
from toolkit.weights.hf import config_from_hf, config_to_hf, load_hf
from toolkit.weights.loader import load_pretrained
from toolkit.weights.safetensors_file import SafetensorsFile
from toolkit.weights.safetensors_file import write as write_safetensors

torch = pytest.importorskip("torch", reason="the transformers parity tests need torch (BUILD.md: a CPU wheel)")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4
FP32 = Runtime(param_dtype="float32", dtype="float32")
FAMILIES = ("gemma", "gemma2", "gemma3")
# Right-padded, longer than the sliding window (4): local layers really drop keys.
TOKENS = np.array([[2, 17, 250, 33, 48, 99, 7, 301, 12, 5], [2, 400, 3, 88, 123, 9, 61, 0, 0, 0]], np.int32)
MASK = np.array([[1] * 10, [1] * 7 + [0] * 3], np.int32)


def _hf_config(family: str):
    common = dict(vocab_size=kf.VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_attention_heads=4, head_dim=8,
                  max_position_embeddings=128)
    if family == "gemma":
        return transformers.GemmaConfig(num_hidden_layers=2, num_key_value_heads=1, **common)
    if family == "gemma2":
        return transformers.Gemma2Config(num_hidden_layers=4, num_key_value_heads=2, sliding_window=4,
                                         query_pre_attn_scalar=8, **common)
    # Gemma 3 with linear RoPE scaling on the global layers, as the 4B has.
    return transformers.Gemma3TextConfig(
        num_hidden_layers=6, num_key_value_heads=2, sliding_window=4, query_pre_attn_scalar=8,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}},
        **common)


def _hf_model(family: str):
    cls = {"gemma": transformers.GemmaForCausalLM, "gemma2": transformers.Gemma2ForCausalLM,
           "gemma3": transformers.Gemma3ForCausalLM}[family]
    config = _hf_config(family)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # norms start at 0 (a scale of 1): draw them too, so a swapped norm shows
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if "norm" in name else 0.2)
    return model


def _hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(TOKENS, dtype=torch.long), attention_mask=torch.tensor(MASK))
    return out.logits.float().numpy()


def _ours(directory: Path) -> np.ndarray:
    cfg, params, _ = load_hf(directory)
    model = from_params(cfg, params, runtime=FP32, source=str(directory))
    return np.asarray(model(jnp.asarray(TOKENS), jnp.asarray(MASK.astype(bool))), np.float32)


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    real = MASK.astype(bool)
    assert ours.shape == theirs.shape == (*TOKENS.shape, kf.VOCAB_SIZE)
    assert np.abs(theirs[real]).std() > 0.1  # not trivially small, so 1e-4 is a real bound
    np.testing.assert_allclose(ours[real], theirs[real], atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """family -> (a transformers `save_pretrained` directory with our test tokenizer, its logits)."""
    root = tmp_path_factory.mktemp("hf_checkpoints")
    out = {}
    for family in FAMILIES:
        model = _hf_model(family)
        model.save_pretrained(root / family)
        (root / family / "tokenizer.model").write_bytes(kf.spm_proto())
        out[family] = (root / family, _hf_logits(model))
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_logits_match_transformers(checkpoints, family):
    directory, theirs = checkpoints[family]
    _assert_close(_ours(directory), theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_bfloat16_checkpoint_loads_the_same_tensors(checkpoints, family, tmp_path):
    """Shards listed in model.safetensors.index.json, stored in bfloat16, as the hub ships big models."""
    directory, _ = checkpoints[family]
    with SafetensorsFile(directory / "model.safetensors") as f:
        tensors = {k: np.array(f.tensor(k)) for k in f.keys()}
    names = sorted(tensors)
    import ml_dtypes

    half = {n: tensors[n].astype(ml_dtypes.bfloat16) for n in names}
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        write_safetensors(tmp_path / shard, {k: half[k] for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    cfg, params, tokenizer = load_hf(tmp_path)
    assert tokenizer is None
    ref_cfg, ref, _ = load_hf(directory)
    assert cfg.replace(name="x") == ref_cfg.replace(name="x") and set(params) == set(ref)
    for k in ref:  # bfloat16 keeps 8 bits of mantissa
        np.testing.assert_allclose(params[k], ref[k], rtol=2 ** -8, atol=1e-6)


def test_hub_and_transformers5_configs_of_the_270m_are_the_named_config():
    hub = {  # google/gemma-3-270m's config.json, as the hub serves it
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 262144,
        "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 512,
        "_sliding_window_pattern": 6, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
        "rope_scaling": None, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
        "attn_logit_softcapping": None, "final_logit_softcapping": None, "use_bidirectional_attention": False,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    }
    named = get_config("gemma3_270m")
    assert config_from_hf(hub, Path("config.json"), "270m") == named
    modern = transformers.Gemma3TextConfig(**{k: v for k, v in hub.items() if k != "architectures"}).to_dict()
    assert "rope_parameters" in modern
    assert config_from_hf(modern, Path("config.json"), "270m") == named
    # Export writes the hub dialect back, and it reads as the same architecture.
    assert config_from_hf(config_to_hf(named), Path("config.json"), "x") == named


@pytest.mark.parametrize("change, words", [
    ({"model_type": "llama"}, "model_type 'llama' is not a Gemma"),
    ({"hidden_size": None}, "key 'hidden_size' is missing"),
    ({"layer_types": ["full_attention"] + ["sliding_attention"] * 5}, "not a repeating (local x 0, global)"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn' is not supported"),
])
def test_a_config_we_cannot_run_is_named(checkpoints, tmp_path, change, words):
    directory, _ = checkpoints["gemma3"]
    for p in directory.iterdir():
        shutil.copy(p, tmp_path / p.name)
    config = {**json.loads((directory / "config.json").read_text()), **change}
    if "rope_scaling" in change:  # the hub dialect: transformers 5's rope_parameters would win
        config.pop("rope_parameters", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightImportError, match=r"config\.json") as e:
        load_hf(tmp_path)
    assert words in str(e.value)


def test_a_missing_or_misshapen_tensor_is_named(checkpoints, tmp_path):
    directory, _ = checkpoints["gemma"]
    with SafetensorsFile(directory / "model.safetensors") as f:
        tensors = {k: np.array(f.tensor(k)) for k in f.keys()}
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    write_safetensors(tmp_path / "model.safetensors",
                      {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(WeightImportError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        load_hf(tmp_path)
    write_safetensors(tmp_path / "model.safetensors",
                      {**tensors, "model.norm.weight": np.zeros(31, np.float32)})
    with pytest.raises(WeightImportError, match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(31,\)"):
        load_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(WeightImportError, match="truncated or damaged|not a safetensors file"):
        load_hf(tmp_path)


def _hub_cache(cache: Path, repo: str, directory: Path) -> None:
    """`directory` laid out as huggingface_hub's cache holds a downloaded snapshot of `repo`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(directory, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_hf_spec_reads_the_hub_cache_offline_and_names_it_when_empty(checkpoints, tmp_path, monkeypatch):
    """`hf:ORG/NAME` through huggingface_hub: the hub is unreachable here, so this tests the
    cache path a user with no network takes, and the one-line error without a cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    directory, theirs = checkpoints["gemma2"]
    _hub_cache(tmp_path / "huggingface", "tiny/gemma2", directory)
    model, tokenizer = load_pretrained("hf:tiny/gemma2", cache_dir=tmp_path, runtime=FP32)
    assert tokenizer.vocab_size == kf.VOCAB_SIZE
    _assert_close(np.asarray(model(jnp.asarray(TOKENS), jnp.asarray(MASK.astype(bool)))), theirs)
    with pytest.raises(WeightImportError) as e:
        load_pretrained("hf:google/gemma-3-270m", cache_dir=tmp_path / "empty")
    message = str(e.value)
    assert "\n" not in message and "hf:google/gemma-3-270m" in message and str(tmp_path / "empty") in message
    with pytest.raises(WeightImportError, match="expected hf:ORG/NAME"):
        load_pretrained("hf:gemma-3-270m", cache_dir=tmp_path)


@pytest.fixture(scope="module")
def trained(checkpoints, tmp_path_factory):
    """A classifier on the tiny transformers Gemma 3, its adapters trained a few steps."""
    directory, _ = checkpoints["gemma3"]
    clf = AgileClassifier(LABELS, model=str(directory), verbalizers=VERBALIZERS, prompt={"instructions": "Classify"},
                          max_length=64, progress=False, param_dtype="float32",
                          lora={"rank": 4, "alpha": 8, "targets": ["q", "v", "o", "up", "down"]},
                          train={"epochs": 2, "batch_size": 8, "learning_rate": 3e-2})
    texts = [f"text {i} " + ("win a prize now" if i % 2 else "see you at lunch") for i in range(24)]
    clf.fit(texts, [LABELS[i % 2] for i in range(24)])
    return clf, clf.save(tmp_path_factory.mktemp("hf_trained") / "classifier")


@pytest.mark.slow
def test_export_hf_loads_in_transformers_with_our_logits(trained, tmp_path):
    clf, saved = trained
    out = export(saved, tmp_path / "hf", format="hf")
    for name in ("config.json", "model.safetensors", "tokenizer.model", "classifier.json"):
        assert (out / name).is_file(), name
    assert no_temp_files(tmp_path)
    theirs = _hf_logits(transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager"))
    model = clf._model()
    ours = np.asarray(model(jnp.asarray(TOKENS), jnp.asarray(MASK.astype(bool))), np.float32)
    base = _ours(Path(clf.model_spec))
    assert np.abs(ours - base)[MASK.astype(bool)].max() > 1e-3  # the merged adapters change the logits
    _assert_close(ours, theirs)
    # Our loader reads the same directory: same scores, labels and prompt.
    texts = ["win a prize now", "see you at lunch", "free money here"]
    again = AgileClassifier.load(out, progress=False)
    np.testing.assert_allclose(again.predict_proba(texts), clf.predict_proba(texts), atol=1e-5, rtol=0)
    assert again.class_names == clf.class_names


@pytest.mark.slow
def test_export_hf_in_bfloat16_halves_the_file(trained, tmp_path):
    _, saved = trained
    full = export(saved, tmp_path / "fp32", format="hf")
    half = export(saved, tmp_path / "bf16", format="hf", dtype="bfloat16")
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.49 < ratio < 0.53  # (the header is the same size in both)
    assert json.loads((half / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model = transformers.AutoModelForCausalLM.from_pretrained(half)
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("prefix", ["model.language_model.", "language_model.model."])
def test_a_multimodal_gemma3_checkpoint_loads_its_text_decoder(checkpoints, tmp_path, prefix):
    """Gemma3ForConditionalGeneration's files (transformers 5 and 4 spell the decoder's prefix
    differently): the text decoder loads, the vision tower's tensors are left alone."""
    directory, theirs = checkpoints["gemma3"]
    with SafetensorsFile(directory / "model.safetensors") as f:
        tensors = {prefix + k.removeprefix("model."): np.array(f.tensor(k)) for k in f.keys()}
    tensors["model.vision_tower.patch_embedding.weight"] = np.zeros((4, 4), np.float32)
    write_safetensors(tmp_path / "model.safetensors", tensors)
    text = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text,
                                                      "vision_config": {"hidden_size": 4}}))
    _assert_close(_ours(tmp_path), theirs)
