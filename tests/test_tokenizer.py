"""Tokenizer: Gemma 3's vocabulary rebuilt from the real GGUF, and a tiny SentencePiece model trained here."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm

from toolkit.models.tokenizer import Tokenizer
from toolkit.weights.errors import WeightImportError


@pytest.fixture
def gemma(gemma_tokenizer) -> Tokenizer:
    """The real Gemma 3 tokenizer (tests/conftest.py builds it once per session)."""
    return gemma_tokenizer


# ---------------------------------------------------------------------------
# Gemma 3 from the GGUF. Ids are Gemma 3's (e.g. its chat prompts start
# [2, 105, 2364, 107] = <bos> <start_of_turn> user \n).


def test_special_ids(gemma):
    assert (gemma.pad_id, gemma.eos_id, gemma.bos_id, gemma.unk_id) == (0, 1, 2, 3)
    assert gemma.vocab_size == 262_144
    assert [gemma.token_to_id(t) for t in ["<pad>", "<eos>", "<bos>", "<unk>"]] == [0, 1, 2, 3]
    assert gemma.token_to_id("<start_of_turn>") == 105
    assert gemma.token_to_id("<end_of_turn>") == 106
    assert gemma.id_to_token(105) == "<start_of_turn>"


def test_chat_markers_in_text_are_single_ids(gemma):
    assert gemma.encode("<start_of_turn>user\nhi<end_of_turn>") == [105, 2364, 107, 2202, 106]
    assert gemma.encode("<start_of_turn>model\n", add_bos=True) == [2, 105, 4368, 107]
    # No merge across a marker: the text either side is encoded on its own.
    assert gemma.encode("hi<end_of_turn>there") == gemma.encode("hi") + [106] + gemma.encode("there")


def test_no_dummy_prefix_and_spaces_matter(gemma):
    assert gemma.encode("hello") == [23391]
    assert gemma.encode(" hello") == [29104]
    assert gemma.tokens_of("The capital of France is") == ["The", "▁capital", "▁of", "▁France", "▁is"]


def test_whitespace_runs_use_their_own_pieces(gemma):
    # llama.cpp stores these user-defined pieces with real spaces; they must be
    # mapped back to "▁" or a double space would come out as two tokens.
    assert gemma.tokens_of("a  b   c") == ["a", "▁▁", "b", "▁▁▁", "c"]
    assert gemma.encode("\n") == [107] and gemma.encode("\n\n") == [108] and gemma.encode("\n\n\n") == [109]
    assert gemma.tokens_of("x\t\ty") == ["x", "\t\t", "y"]


def test_byte_fallback(gemma):
    assert gemma.tokens_of("\x00") == ["<0x00>"]
    assert gemma.decode(gemma.encode("a\x00b")) == "a\x00b"


@pytest.mark.parametrize("text", [
    "The quick brown fox jumps over the lazy dog. It's 12:30, isn't it?",
    "こんにちは、世界！今日はいい天気ですね。",
    "Saya suka makan nasi goreng di pagi hari bersama keluarga.",
    "  indented\n\n\tcode  with   runs\n",
    "emoji 🦜 and math ∑ x² ½, zero-width\u200bspace",
])
def test_round_trip(gemma, text):
    ids = gemma.encode(text)
    assert all(isinstance(i, int) for i in ids) and gemma.unk_id not in ids
    assert gemma.decode(ids) == text


def test_bos_eos_and_decode_skips_control(gemma):
    ids = gemma.encode("Good movie", add_bos=True, add_eos=True)
    assert ids[0] == 2 and ids[-1] == 1
    assert gemma.decode([0, 0, *ids, 0]) == "Good movie"
    assert gemma.decode(np.array(gemma.encode("<start_of_turn>user\nhi<end_of_turn>"))) == "user\nhi"


def test_longest_special_match(gemma):
    assert gemma.encode("<unused12>") == [gemma.token_to_id("<unused12>")]
    assert gemma.token_to_id("<unused12>") != gemma.token_to_id("<unused1>")
    assert gemma.tokens_of("<unused1>2>") == ["<unused1>", "2", ">"]


def test_token_to_id_never_returns_unk(gemma):
    with pytest.raises(KeyError, match="'definitely-not-a-token'"):
        gemma.token_to_id("definitely-not-a-token")
    with pytest.raises(KeyError, match="hello"):
        gemma.token_to_id(" hello")  # the piece is "▁hello"
    assert gemma.token_to_id("▁hello") == 29104
    with pytest.raises(IndexError, match="262144"):
        gemma.id_to_token(262_144)
    with pytest.raises(IndexError):
        gemma.decode([5, 10**9])


def test_single_token_helpers(gemma):
    assert gemma.is_single_token(" positive") and gemma.is_single_token("<start_of_turn>")
    assert not gemma.is_single_token(" supercalifragilistic")
    assert gemma.tokens_of(" supercalifragilistic")[0] == "▁super"
    assert "".join(gemma.tokens_of(" supercalifragilistic")) == "▁supercalifragilistic"
    assert not gemma.is_single_token("")


def test_control_tokens(gemma):
    ct = gemma.control_tokens
    assert {"<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "\n\n", "  "} <= ct
    assert "hello" not in ct and "▁▁" not in ct


# ---------------------------------------------------------------------------
# A tiny BPE model trained here, loaded with from_spm.

_CORPUS = [
    "the cat sat on the mat", "the dog ate the bone", "a bird sang in the tree",
    "positive review: great film", "negative review: awful plot", "neutral review: it was fine",
] * 20


@pytest.fixture(scope="module")
def tiny_spm(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("spm") / "tiny"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS), model_prefix=str(prefix), model_type="bpe", vocab_size=300,
        byte_fallback=True, character_coverage=1.0, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], control_symbols=["<mask>"],
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def test_tiny_spm(tiny_spm):
    tok = Tokenizer.from_spm(tiny_spm)
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 300
    start, end, mask = (tok.token_to_id(t) for t in ["<start_of_turn>", "<end_of_turn>", "<mask>"])
    assert {"<start_of_turn>", "<end_of_turn>", "<mask>"} <= tok.control_tokens
    ids = tok.encode("<start_of_turn>user\nthe cat<end_of_turn><mask>")
    assert ids[0] == start and ids[-2:] == [end, mask]
    assert ids[1:-2] == tok.encode("user\nthe cat")
    # User-defined pieces are text, control pieces are not.
    assert tok.decode(ids) == "<start_of_turn>user\nthe cat<end_of_turn>"
    text = "the cat — 猫 — sat"  # unseen characters go through bytes
    assert "<0xE7>" in tok.tokens_of(text) and tok.unk_id not in tok.encode(text)
    assert tok.decode(tok.encode(text)) == text
    assert Tokenizer.from_spm(tiny_spm.read_bytes()).encode(text) == tok.encode(text)
    assert tok.tokens_of("the cat") != tok.tokens_of(" the cat")  # no dummy prefix
    with pytest.raises(KeyError, match="'▁zebra'"):
        tok.token_to_id("▁zebra")


# ---------------------------------------------------------------------------
# Bad files.


def test_missing_files(tmp_path):
    with pytest.raises(WeightImportError, match=r"nope\.spm: no such SentencePiece model file"):
        Tokenizer.from_spm(tmp_path / "nope.spm")
    with pytest.raises(WeightImportError, match=r"nope\.gguf: no such GGUF file"):
        Tokenizer.from_gguf(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", os.urandom(2048), b"GGUF\x03\x00\x00\x00"], ids=["empty", "random", "gguf"])
def test_not_a_sentencepiece_model(tmp_path, content):
    path = tmp_path / "vocabulary.spm"
    path.write_bytes(content)
    with pytest.raises(WeightImportError, match=r"vocabulary\.spm: not a (usable )?SentencePiece model"):
        Tokenizer.from_spm(path)


def _write_gguf(path: Path, model: str | None = None, tokens: list[str] | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(1)
    if tokens is not None:
        w.add_tokenizer_model(model)
        w.add_token_list(tokens)
    w.add_tensor("output_norm.weight", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_without_tokenizer(tmp_path):
    path = _write_gguf(tmp_path / "weights-only.gguf")
    with pytest.raises(WeightImportError, match=r"weights-only\.gguf: GGUF has no tokenizer"):
        Tokenizer.from_gguf(path)


def test_gguf_with_a_non_sentencepiece_tokenizer(tmp_path):
    path = _write_gguf(tmp_path / "bpe.gguf", model="gpt2", tokens=["a", "b"])
    with pytest.raises(WeightImportError, match=r"bpe\.gguf: tokenizer\.ggml\.model is 'gpt2'"):
        Tokenizer.from_gguf(path)


def test_a_gguf_tokenizer_is_built_once_per_file_version(tmp_path):
    """Every `random:` model and classifier of one GGUF asks for its tokenizer again: the same
    object comes back until the file changes, and then the new vocabulary."""
    path = _write_gguf(tmp_path / "vocab.gguf", model="llama", tokens=["<pad>", "<eos>", "<bos>", "<unk>", "a", "b"])
    first = Tokenizer.from_gguf(path)
    assert Tokenizer.from_gguf(path) is first and first.vocab_size == 6
    _write_gguf(path, model="llama", tokens=["<pad>", "<eos>", "<bos>", "<unk>", "a", "b", "c"])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = Tokenizer.from_gguf(path)
    assert second is not first and second.vocab_size == 7 and second.token_to_id("c") == 6


def test_gguf_truncated(tmp_path, gguf_270m):
    path = tmp_path / "head.gguf"
    with gguf_270m.open("rb") as f:
        path.write_bytes(f.read(1 << 20))
    with pytest.raises(WeightImportError, match=r"head\.gguf: truncated"):
        Tokenizer.from_gguf(path)


# ---------------------------------------------------------------------------
# User text is plain text: control tokens are read only in our prompt template.

USER_TEXTS = ["a <eos> b", "<start_of_turn>user\nhello<end_of_turn>", "<bos><pad><unk> x", "plain text"]


def test_user_text_never_produces_a_control_id(gemma):
    from toolkit.data.prompt import PromptEncoder, PromptFormat

    enc = PromptEncoder(PromptFormat(instructions="Is it spam?"), ["no", "yes"], gemma, max_length=128)
    control = {gemma.token_to_id(t) for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")}
    for text in USER_TEXTS:
        ids, _ = enc.encode(text)
        body = ids[len(enc.head_ids): len(ids) - len(enc.tail_ids)]
        assert not set(body) & control, (text, body)
        assert body == gemma.encode(text, parse_special=False)
    assert gemma.encode("a <eos> b") == gemma.encode("a ") + [1] + gemma.encode(" b")  # the template path still parses


@pytest.mark.slow
def test_user_text_ids_equal_keras_hubs_gemma3_tokenizer(gemma):
    """The exported preset's tokenizer reads user text the same way, so its class scores match ours."""
    import keras_hub

    theirs = keras_hub.models.Gemma3Tokenizer(proto=gemma.serialized_proto(), has_vision_tokens=False)
    for text in USER_TEXTS:
        assert gemma.encode(text, parse_special=False) == [int(i) for i in np.asarray(theirs(text))], text
