"""The NNX Gemma on its own: sizes, masking, LoRA and loading from a flat dict.

Numerical parity with keras-hub lives in test_parity_keras.py; these tests pin
the properties that parity on a few prompts would not catch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from toolkit.models import layout
from toolkit.models.configs import Runtime, get_config, named_configs
from toolkit.models.build import from_params
from toolkit.models.gemma import Gemma, flat_state, merged_params
from toolkit.models.lora import LoRAConfig
from toolkit.weights.errors import WeightImportError

FP32 = Runtime(param_dtype="float32", dtype="float32")


def _count(name: str) -> int:
    abstract = nnx.eval_shape(lambda: Gemma(get_config(name), rngs=nnx.Rngs(0)))
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize(
    "name, keras_hub_count",
    [  # keras-hub's published preset sizes (gemma3_4b: its text-only preset)
        ("gemma_2b", 2_506_172_416),
        ("gemma_7b", 8_537_680_896),
        ("gemma2_2b", 2_614_341_888),
        ("gemma2_9b", 9_241_705_984),
        ("gemma3_270m", 268_098_176),
        ("gemma3_1b", 999_885_952),
        ("gemma3_4b", 3_880_099_328),
    ],
)
def test_named_configs_have_the_published_parameter_counts(name, keras_hub_count):
    assert _count(name) == keras_hub_count


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="gemma3_270m"):
        get_config("gemma4_1t")
    assert {"tiny_gemma", "tiny_gemma2", "tiny_gemma3"} <= set(named_configs())


def test_layer_pattern_matches_each_family():
    g3 = get_config("gemma3_270m")
    assert [i for i in range(g3.num_layers) if g3.is_global_layer(i)] == [5, 11, 17]
    g2 = get_config("gemma2_2b")
    assert [g2.is_global_layer(i) for i in range(4)] == [False, True, False, True]
    assert all(get_config("gemma_7b").is_global_layer(i) for i in range(28))


@pytest.mark.slow
def test_every_parameter_has_logical_axis_names():
    model = Gemma(get_config("tiny_gemma3"), runtime=FP32, lora=LoRAConfig(targets=("q", "down")), rngs=nnx.Rngs(0))
    known = {"layers", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", None}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata()["out_sharding"]
        assert len(names) == var.value.ndim, path
        assert set(names) <= known, path
        if path[0] == "layers":  # scanned: every layer's weights stacked on an unsharded leading axis
            assert names[0] == "layers" and var.value.shape[0] == model.config.num_layers, path
            names = names[1:]
        if path[-1] == "lora_b":  # B follows the output axis of its base kernel, rank unsharded
            assert names[0] is None


@pytest.fixture(scope="module", params=["tiny_gemma", "tiny_gemma2", "tiny_gemma3"])
def model(request):
    return Gemma(get_config(request.param), runtime=FP32, rngs=nnx.Rngs(1))


@pytest.mark.slow
def test_future_tokens_do_not_change_the_past(model):
    a = jnp.array([[3, 4, 5, 6, 7, 8]])
    b = a.at[0, 4:].set(99)
    ha, hb = model.hidden_states(a), model.hidden_states(b)
    np.testing.assert_allclose(ha[:, :4], hb[:, :4], atol=1e-6)
    assert not np.allclose(ha[:, 4:], hb[:, 4:], atol=1e-3)


@pytest.mark.slow
def test_right_padding_leaves_real_positions_unchanged(model):
    real = jnp.array([[3, 4, 5]])
    padded = jnp.array([[3, 4, 5, 0, 0], [9, 9, 9, 9, 9]])
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_allclose(model(padded, mask)[0, :3], model(real)[0], atol=1e-5)


def test_sliding_window_hides_tokens_beyond_the_window():
    # One local layer with window 2: position t sees t-1 and t only.
    local = get_config("tiny_gemma3").replace(num_layers=1, sliding_window=2)
    m = Gemma(local, runtime=FP32, rngs=nnx.Rngs(0))
    a = jnp.array([[3, 4, 5, 6]])
    b = a.at[0, 0].set(77)
    ha, hb = m.hidden_states(a), m.hidden_states(b)
    np.testing.assert_allclose(ha[:, 2:], hb[:, 2:], atol=1e-6)
    assert not np.allclose(ha[:, 1], hb[:, 1], atol=1e-3)
    # The same single layer made global sees everything.
    g = Gemma(local.replace(sliding_window_pattern=1), runtime=FP32, rngs=nnx.Rngs(0))
    assert not np.allclose(g.hidden_states(a)[:, 3], g.hidden_states(b)[:, 3], atol=1e-3)


@pytest.mark.slow
def test_project_onto_a_few_rows_equals_slicing_full_logits():
    m = Gemma(get_config("tiny_gemma2"), runtime=FP32, rngs=nnx.Rngs(0))
    h = m.hidden_states(jnp.array([[3, 4, 5]]))[:, -1]
    ids = jnp.array([17, 4, 300])
    np.testing.assert_allclose(m.project(h, ids), m.project(h)[:, ids], rtol=1e-6, atol=1e-6)


def _with_random_b(model):
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        if path[-1] == "lora_b":
            var.set_value(jax.random.normal(jax.random.key(len(path)), var.value.shape) * 0.1)
    return model


@pytest.mark.slow
def test_fresh_lora_is_a_no_op_and_merging_folds_it_in():
    cfg = get_config("tiny_gemma3")
    lora = LoRAConfig(rank=3, alpha=6.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
    tokens = jnp.array([[3, 4, 5, 6]])
    adapted = Gemma(cfg, runtime=FP32, lora=lora, rngs=nnx.Rngs(0))
    frozen = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
    base = from_params(cfg, {k: np.asarray(v) for k, v in flat_state(adapted, frozen).items()}, runtime=FP32)
    np.testing.assert_allclose(adapted(tokens), base(tokens), atol=1e-5)
    _with_random_b(adapted)
    out = adapted(tokens)
    assert not np.allclose(out, base(tokens), atol=1e-3)
    merged = from_params(cfg, merged_params(adapted), runtime=FP32)
    np.testing.assert_allclose(merged(tokens), out, atol=1e-4)


@pytest.mark.slow
def test_gradients_exist_only_for_lora_params():
    cfg = get_config("tiny_gemma")
    model = _with_random_b(Gemma(cfg, runtime=FP32, lora=LoRAConfig(rank=2, targets=("q", "up")), rngs=nnx.Rngs(0)))
    tokens = jnp.array([[3, 4, 5, 6]])

    def loss(m):
        return m(tokens)[..., 7].sum()

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
    flat = layout.to_exchange({".".join(map(str, p)): g[...] for p, g in nnx.to_flat_state(grads)}, model.stacking)
    assert set(flat) == {f"layers.{i}.{m}.{w}" for i in range(2) for m in ("attn.q_proj", "mlp.up_proj")
                         for w in ("lora_a", "lora_b")}
    assert all(float(jnp.abs(g).sum()) > 0 for g in flat.values())


def test_lora_config_rejects_unknown_targets_and_bad_values():
    with pytest.raises(ValueError, match="qkv"):
        LoRAConfig(targets=("qkv",))
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    assert LoRAConfig(rank=8, alpha=16).scale == 2.0


@pytest.mark.slow
def test_from_params_names_the_missing_extra_or_misshapen_tensor():
    cfg = get_config("tiny_gemma")
    params = {k: np.asarray(v) for k, v in flat_state(Gemma(cfg, runtime=FP32, rngs=nnx.Rngs(0))).items()}
    missing = dict(params)
    del missing["layers.1.mlp.down_proj.kernel"]
    with pytest.raises(WeightImportError, match=r"ckpt\.h5.*layers\.1\.mlp\.down_proj\.kernel"):
        from_params(cfg, missing, runtime=FP32, source="ckpt.h5")
    extra = dict(params, **{"layers.0.attn.q_norm.scale": np.zeros(8)})
    with pytest.raises(WeightImportError, match="layers.0.attn.q_norm.scale"):
        from_params(cfg, extra, runtime=FP32, source="ckpt.h5")
    bad = dict(params, **{"final_norm.scale": np.zeros(31)})
    with pytest.raises(WeightImportError, match=r"final_norm\.scale.*\(31,\).*\(32,\)"):
        from_params(cfg, bad, runtime=FP32, source="ckpt.h5")


@pytest.mark.slow
def test_bf16_base_keeps_lora_in_fp32():
    m = Gemma(get_config("tiny_gemma"), lora=LoRAConfig(), rngs=nnx.Rngs(0))
    dtypes = {str(v.value.dtype) for _, v in nnx.to_flat_state(nnx.state(m, nnx.LoRAParam))}
    base = {str(v.value.dtype) for _, v in nnx.to_flat_state(nnx.state(m, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))}
    assert dtypes == {"float32"} and base == {"bfloat16"}
    assert jnp.isfinite(m(jnp.array([[3, 4, 5]]))).all()


@pytest.mark.parametrize("name", ["tiny_gemma", "tiny_gemma2", "tiny_gemma3"])
@pytest.mark.slow
def test_shared_prefix_gives_the_same_states_as_the_full_sequence(name):
    # The head (6 tokens) is longer than the tiny sliding window (4), so local
    # layers must window across the prefix boundary correctly.
    m = Gemma(get_config(name), runtime=FP32, lora=LoRAConfig(rank=2, targets=("q", "v")), rngs=nnx.Rngs(3))
    head = jnp.array([2, 40, 41, 42, 43, 44])
    rows = jnp.array([[7, 8, 9, 10, 11], [12, 13, 0, 0, 0]])
    mask = jnp.array([[1] * 5, [1, 1, 0, 0, 0]])
    full = m.hidden_states(jnp.concatenate([jnp.broadcast_to(head, (2, 6)), rows], 1),
                           jnp.concatenate([jnp.ones((2, 6), int), mask], 1))[:, 6:]
    split = m.hidden_states(rows, mask, prefix=m.prefix(head))
    np.testing.assert_allclose(split[0], full[0], atol=2e-5)
    np.testing.assert_allclose(split[1, :2], full[1, :2], atol=2e-5)
