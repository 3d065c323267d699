"""Tiny random keras-hub Gemma presets, for tests (a helper module, not a test file).

`make_preset(kind, dir)` builds a tiny keras-hub causal LM of one Gemma family
("gemma", "gemma2", "gemma3") with EVERY weight randomised (keras initialises
RMSNorm scales to zero, which would leave the norms untested) and saves it with
`save_to_preset`, the same layout as a preset downloaded from Kaggle:
config.json, model.weights.h5, tokenizer.json, task.json, preprocessor.json,
assets/tokenizer/vocabulary.spm. Gemma 4 has two kinds (`GEMMA4_KINDS`): "gemma4",
the text decoder alone, and "gemma4_towers", the same decoder with tiny vision and
audio encoders in its backbone (as the real Gemma 4 presets have them).

`keras_logits` runs keras-hub itself on a preset (the reference for parity
tests) and `enable_keras_lora` switches on keras-hub LoRA with random A/B and
returns them under our flat parameter names.

Keras is pinned to the JAX backend here, before keras is first imported.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

from pathlib import Path
from typing import Any, Iterable

import numpy as np

VOCAB_SIZE = 512
KINDS = ("gemma", "gemma2", "gemma3")
GEMMA4_KINDS = ("gemma4", "gemma4_towers")  # text decoder alone; with vision and audio encoders
GEMMA4_GAINS = (0.5, 1.5)  # random norm gains / layer scalars around 1 (`randomize`)

# keras-hub attention/MLP sublayer name -> our projection name (layer-relative).
KERAS_TO_OURS = {
    "query": "attn.q_proj",
    "key": "attn.k_proj",
    "value": "attn.v_proj",
    "attention_output": "attn.o_proj",
    "ffw_gating": "mlp.gate_proj",
    "ffw_gating_2": "mlp.up_proj",
    "ffw_linear": "mlp.down_proj",
}
# Our LoRA target names (toolkit.models.lora.TARGETS) -> keras-hub layer names.
TARGET_TO_KERAS = {
    "q": "query",
    "k": "key",
    "v": "value",
    "o": "attention_output",
    "gate": "ffw_gating",
    "up": "ffw_gating_2",
    "down": "ffw_linear",
}

# Gemma's special pieces. pad/eos/bos/unk get Gemma's ids 0/1/2/3; the
# GemmaTokenizer requires <bos>/<eos>/<pad>, the Gemma3Tokenizer additionally
# <img>/<start_of_image>/<end_of_image> (unless has_vision_tokens=False).
USER_SYMBOLS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<img>"]

_SENTENCES = [
    "The quick brown fox jumped over the lazy dog.",
    "This movie was wonderful, I loved every minute of it!",
    "Terrible service; the food was cold and the waiter was rude.",
    "Is this message spam or not spam? Click here to win a prize.",
    "Gemma is a family of lightweight open models from Google.",
    "Fine-tuning a classifier with LoRA adapters is cheap and fast.",
    "Numbers like 12345 and 67890 appear in the text, too.",
    "She sells sea shells by the sea shore in the summer sun.",
]


def _corpus() -> list[str]:
    """A few sentences plus deterministic pseudo-words so BPE can reach 512 pieces."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lines = list(_SENTENCES) * 4
    for _ in range(400):
        words = ["".join(rng.choice(letters, size=rng.integers(2, 8))) for _ in range(10)]
        lines.append(" ".join(words))
    return lines


_SPM_PROTO: bytes | None = None


def spm_proto() -> bytes:
    """A tiny Gemma-like SentencePiece model (BPE, byte fallback), trained once."""
    global _SPM_PROTO
    if _SPM_PROTO is None:
        import sentencepiece as spm

        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus()),
            model_writer=out,
            vocab_size=VOCAB_SIZE,
            model_type="BPE",
            byte_fallback=True,
            character_coverage=1.0,
            pad_id=0,
            eos_id=1,
            bos_id=2,
            unk_id=3,
            pad_piece="<pad>",
            eos_piece="<eos>",
            bos_piece="<bos>",
            unk_piece="<unk>",
            user_defined_symbols=USER_SYMBOLS,
            # Gemma's normalisation: none, no dummy "▁" prefix, keep spaces, split digits.
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            num_threads=1,
            minloglevel=2,
        )
        _SPM_PROTO = out.getvalue()
    return _SPM_PROTO


def _backbone_kwargs(kind: str) -> dict[str, Any]:
    common = dict(vocabulary_size=VOCAB_SIZE, hidden_dim=32, head_dim=8, num_query_heads=4, dtype="float32")
    if kind == "gemma":
        return dict(common, num_layers=2, num_key_value_heads=1, intermediate_dim=128)
    if kind == "gemma2":
        return dict(
            common,
            num_layers=4,
            num_key_value_heads=2,
            intermediate_dim=128,
            query_head_dim_normalize=True,
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
            attention_logit_soft_cap=50.0,
            final_logit_soft_cap=30.0,
            use_sliding_window_attention=True,
            sliding_window_size=4,
        )
    if kind == "gemma3":
        return dict(
            common,
            image_size=16,
            vision_encoder=None,
            num_layers=6,
            num_key_value_heads=2,
            intermediate_dim=64,
            query_head_dim_normalize=True,
            use_query_key_norm=True,
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
            use_sliding_window_attention=True,
            sliding_window_size=4,
            local_rope_scaling_factor=1.0,
            global_rope_scaling_factor=1.0,
        )
    if kind in GEMMA4_KINDS:  # the 2B-like flavour: per-layer inputs, K/V sharing, double-wide MLPs
        from toolkit.models.configs import get_config
        from toolkit.weights.keras_gemma4 import backbone_kwargs

        cfg = get_config("tiny_gemma4", vocab_size=VOCAB_SIZE)
        kwargs = dict(backbone_kwargs(cfg), dtype="float32")
        if kind == "gemma4_towers":
            kwargs.update(_gemma4_towers(cfg.embed_dim))
        return kwargs
    raise ValueError(f"unknown kind {kind!r}; choose from {KINDS + GEMMA4_KINDS}")


def _gemma4_towers(embed_dim: int) -> dict[str, Any]:
    """`Gemma4Backbone` arguments for a tiny vision encoder (8x8 images, 2x2 patches pooled
    2x2: 4 soft tokens) and a tiny audio encoder (one conformer block), both projecting to
    `embed_dim`."""
    import keras_hub

    vision = keras_hub.models.Gemma4VisionEncoder(
        image_size=8, patch_size=2, pool_size=2, num_heads=2, head_dim=4, hidden_dim=8, num_layers=1,
        intermediate_dim=16, output_dim=embed_dim, position_embedding_size=8, dtype="float32")
    audio = keras_hub.models.Gemma4AudioEncoder(
        input_feat_size=8, hidden_size=8, num_heads=2, num_layers=1, chunk_size=4, context_left=5,
        conv_kernel_size=3, sscp_conv_channels=(4, 4), output_proj_dims=8, output_dim=embed_dim, dtype="float32")
    return dict(vision_encoder=vision, audio_encoder=audio, image_size=8, num_audio_tokens_per_clip=4)


def build_causal_lm(kind: str, seed: int = 0):
    """A tiny randomly initialised keras-hub CausalLM of one Gemma family (`KINDS`, `GEMMA4_KINDS`).

    Its preprocessor is text-only (no image or audio converter) for every kind: an encoder
    in the backbone is saved with it but never fed."""
    import keras_hub

    kwargs = _backbone_kwargs(kind)
    if kind in GEMMA4_KINDS:
        tokenizer = keras_hub.models.Gemma4Tokenizer(proto=spm_proto(), has_vision_tokens=False,
                                                     has_audio_tokens=False, has_video_tokens=False)
        backbone = keras_hub.models.Gemma4Backbone(**kwargs)
        pre = keras_hub.models.Gemma4CausalLMPreprocessor(tokenizer=tokenizer, image_converter=None, sequence_length=32)
        lm = keras_hub.models.Gemma4CausalLM(backbone=backbone, preprocessor=pre)
        randomize(backbone, seed, gains=GEMMA4_GAINS)
        return lm
    if kind == "gemma3":
        tokenizer = keras_hub.models.Gemma3Tokenizer(proto=spm_proto())
        backbone = keras_hub.models.Gemma3Backbone(**kwargs)
        pre = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer=tokenizer, image_converter=None, sequence_length=32)
        lm = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=pre)
    else:
        tokenizer = keras_hub.models.GemmaTokenizer(proto=spm_proto())
        backbone = keras_hub.models.GemmaBackbone(**kwargs)
        pre = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer=tokenizer, sequence_length=32)
        lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=pre)
    randomize(backbone, seed)
    return lm


def _fan_in(path: str, shape: tuple[int, ...]) -> int:
    if path.endswith("attention_output/kernel"):  # (heads, head_dim, embed)
        return shape[0] * shape[1]
    if len(shape) == 3:  # q/k/v (heads, embed, head_dim)
        return shape[1]
    return shape[0]


def randomize(backbone, seed: int = 0, gains: tuple[float, float] = (-0.5, 0.5)) -> None:
    """Give every variable a random value: kernels ~ N(0, 1/fan_in), the
    embedding ~ N(0, 1/embed) (so scaled inputs are O(1)), norm scales and
    scalars ~ U(gains): U(-0.5, 0.5) for Gemma 1-3, whose norms store scale - 1
    (keras initialises them to 0, a unit gain); Gemma 4 stores the gain and its
    layer scalars as they are, so it takes gains=GEMMA4_GAINS."""
    rng = np.random.default_rng(seed)
    for v in backbone.weights:
        shape = tuple(v.shape)
        path = v.path
        if path.endswith("scale") or not shape:  # norm gains; Gemma 4's scalar layer_scalar
            val = rng.uniform(*gains, size=shape)
        elif path.endswith("embeddings"):
            val = rng.normal(0.0, shape[1] ** -0.5, size=shape)
        else:
            val = rng.normal(0.0, _fan_in(path, shape) ** -0.5, size=shape)
        v.assign(val.astype(np.float32))


_BUILT: dict[str, Path] = {}  # kind -> the preset this process built (a private copy, never handed out)


def make_preset(kind: str, dir: str | os.PathLike) -> Path:
    """Build a tiny random keras-hub preset of `kind` and save it under `dir/kind`.

    The build is deterministic (a fixed seed per kind), so each kind is built once per
    process and later calls get a fresh copy of the same files, theirs to edit."""
    if kind not in _BUILT:
        root = Path(tempfile.mkdtemp(prefix="agile-toolkit-test-presets-"))
        atexit.register(shutil.rmtree, root, True)
        lm = build_causal_lm(kind, seed=KINDS.index(kind) if kind in KINDS else 0)
        lm.save_to_preset(str(root / kind))
        _BUILT[kind] = root / kind
    path = Path(dir) / kind
    shutil.copytree(_BUILT[kind], path, dirs_exist_ok=True)
    return path


def load_backbone(preset_dir: str | os.PathLike):
    """A fresh keras-hub backbone loaded from `preset_dir` (not cached: callers may mutate it)."""
    import keras_hub

    return keras_hub.models.Backbone.from_preset(str(preset_dir))


def keras_logits(preset_dir, token_ids, padding_mask) -> np.ndarray:
    """Full-vocabulary logits of keras-hub on a batch, fp32 numpy (batch, seq, vocab).

    `preset_dir` may also be an already-loaded backbone (e.g. with LoRA enabled).
    The reverse embedding applies the final logit soft-cap, as GemmaCausalLM does.
    """
    backbone = preset_dir if hasattr(preset_dir, "token_embedding") else load_backbone(preset_dir)
    x = backbone(
        {
            "token_ids": np.asarray(token_ids, dtype=np.int32),
            "padding_mask": np.asarray(padding_mask, dtype=np.int32),
        }
    )
    logits = backbone.token_embedding(x, reverse=True)
    return np.asarray(logits, dtype=np.float32)


def enable_keras_lora(
    backbone, rank: int = 4, targets: Iterable[str] = ("q", "v"), seed: int = 0, scale: float = 0.1
) -> dict[str, np.ndarray]:
    """Enable keras-hub LoRA on `targets` (our target names), fill A and B with
    random values (keras initialises B to zero, which would hide any mismatch),
    and return them under our flat names: `layers.{i}.attn.q_proj.lora_a` etc.

    keras-hub's default alpha equals the rank (scale 1), as our LoRAConfig's.
    """
    targets = tuple(targets)
    keras_names = [TARGET_TO_KERAS[t] for t in targets]
    backbone.enable_lora(rank, target_layer_names=keras_names)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i, block in enumerate(backbone.transformer_layers):
        for layer in einsum_layers(block):
            if layer.name not in keras_names:
                continue
            a = rng.normal(0.0, scale, size=tuple(layer.lora_kernel_a.shape)).astype(np.float32)
            b = rng.normal(0.0, scale, size=tuple(layer.lora_kernel_b.shape)).astype(np.float32)
            layer.lora_kernel_a.assign(a)
            layer.lora_kernel_b.assign(b)
            prefix = f"layers.{i}.{KERAS_TO_OURS[layer.name]}"
            out[f"{prefix}.lora_a"] = a
            out[f"{prefix}.lora_b"] = b
    expected = len(backbone.transformer_layers) * len(targets)
    if len(out) != 2 * expected:
        raise AssertionError(f"enabled LoRA on {len(out) // 2} layers, expected {expected}")
    return out


def einsum_layers(block) -> list:
    """The EinsumDense sublayers of one decoder block (attention and MLP)."""
    return [
        block.attention.query_dense,
        block.attention.key_dense,
        block.attention.value_dense,
        block.attention.output_dense,
        block.gating_ffw,
        block.gating_ffw_2,
        block.ffw_linear,
    ]


def make_bert_preset(dir: str | os.PathLike) -> Path:
    """A tiny keras-hub BertBackbone preset (a non-Gemma backbone, for error tests)."""
    import keras_hub

    path = Path(dir) / "bert"
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=64,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        dtype="float32",
    )
    backbone.save_to_preset(str(path))
    return path
