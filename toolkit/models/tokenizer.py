"""Gemma's SentencePiece tokenizer, loaded from a keras-hub `.spm` or rebuilt from a GGUF.

A GGUF carries the vocabulary (pieces, scores, types) but not the `.model`
file, so `from_gguf` rebuilds the SentencePiece `ModelProto`: a BPE model with
byte fallback, an identity normalizer that keeps whitespace runs and adds no
dummy prefix ("hello" and " hello" are different tokens). llama.cpp's
converter writes user-defined pieces (Gemma's whitespace, newline and tab runs)
with real spaces instead of SentencePiece's "▁"; they are mapped back, or runs
of spaces would no longer match their single-token pieces.

Special tokens (control, user-defined and unknown pieces) written in a prompt
template become their single ids (user text is encoded plain, see `encode`): the text is split on them first, longest
match wins, and the pieces between are encoded by SentencePiece. That is how
the chat markers `<start_of_turn>` / `<end_of_turn>`, which are control
pieces SentencePiece itself would never emit, reach the model as one token.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from toolkit.weights.errors import WeightImportError

_Piece = sp_pb2.ModelProto.SentencePiece
_SPACE = "\u2581"  # SentencePiece's escaped space
# Pieces that are matched literally in text, never assembled by BPE merges.
_SPECIAL_TYPES = (_Piece.CONTROL, _Piece.USER_DEFINED, _Piece.UNKNOWN)


def _literal_alternation(words: Iterable[str]) -> str:
    """A regex matching any of `words`, longest first, as a trie.

    A flat `a|b|...` over Gemma's ~6400 special pieces tries every branch at
    every space and costs ~3 µs per character; the trie form is ~250x faster.
    Greedy optional tails make the longest word win at each position.
    """
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


class Tokenizer:
    """Text <-> ids, with special tokens recognised in text and `token_to_id` that never guesses."""

    def __init__(self, model: sp_pb2.ModelProto, source: str) -> None:
        self.source = source
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
        except (RuntimeError, OSError, ValueError) as e:
            raise WeightImportError(f"{source}: not a usable SentencePiece model: {e}") from None
        specials: dict[str, int] = {}
        for i, piece in enumerate(model.pieces):
            if piece.type in _SPECIAL_TYPES:
                # SentencePiece escapes spaces before matching user-defined pieces;
                # in raw text the same piece appears with real spaces.
                text = piece.piece.replace(_SPACE, " ") if piece.type == _Piece.USER_DEFINED else piece.piece
                if text:
                    specials.setdefault(text, i)
        self._special_ids = specials
        self._special_re = re.compile(f"({_literal_alternation(specials)})") if specials else None

    def serialized_proto(self) -> bytes:
        """The SentencePiece model as bytes: what keras-hub tokenizers and `from_spm` take."""
        return self._sp.serialized_model_proto()

    # -- construction ---------------------------------------------------

    @classmethod
    def from_spm(cls, path_or_bytes: str | os.PathLike[str] | bytes) -> "Tokenizer":
        """From a SentencePiece `.spm` / `.model` file (or its bytes), as keras-hub presets ship it."""
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            data, source = bytes(path_or_bytes), "<SentencePiece model bytes>"
        else:
            path = Path(path_or_bytes)
            if not path.is_file():
                raise WeightImportError(f"{path}: no such SentencePiece model file")
            data, source = path.read_bytes(), str(path)
        model = sp_pb2.ModelProto()
        try:
            model.ParseFromString(data)
        except DecodeError:
            raise WeightImportError(f"{source}: not a SentencePiece model (not a ModelProto)") from None
        if not model.pieces:
            raise WeightImportError(f"{source}: not a SentencePiece model (no vocabulary pieces)")
        return cls(model, source)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> "Tokenizer":
        """From the vocabulary embedded in a llama.cpp GGUF (SentencePiece-type tokenizers only).

        Rebuilding the 262k-piece vocabulary costs ~1 s of CPU, and every `random:` model and
        every classifier of the same GGUF asks for it again (each agile round, fold or sweep
        trial in one process): a tokenizer never changes once built, so the last few are
        kept, keyed by the file's path, size and modification time."""
        path = Path(path)
        try:
            st = path.stat()
        except OSError:
            return cls._from_gguf(path)  # the reader names the problem
        return cls._from_gguf_cached(path, st.st_size, st.st_mtime_ns)

    @classmethod
    @functools.lru_cache(maxsize=4)
    def _from_gguf_cached(cls, path: Path, size: int, mtime_ns: int) -> "Tokenizer":
        del size, mtime_ns  # cache key only: a rewritten file is read again
        return cls._from_gguf(path)

    @classmethod
    def _from_gguf(cls, path: Path) -> "Tokenizer":
        from toolkit.weights.gguf import read_gguf  # the weights side owns GGUF parsing

        meta = read_gguf(path).metadata
        tokens = meta.get("tokenizer.ggml.tokens")
        if not tokens:
            raise WeightImportError(f"{path}: GGUF has no tokenizer (metadata 'tokenizer.ggml.tokens' is missing)")
        kind = meta.get("tokenizer.ggml.model")
        if kind != "llama":
            raise WeightImportError(
                f"{path}: tokenizer.ggml.model is {kind!r}; only SentencePiece ('llama') vocabularies are supported"
            )
        n = len(tokens)
        scores = np.asarray(meta.get("tokenizer.ggml.scores", np.zeros(n)), np.float32)
        types = np.asarray(meta.get("tokenizer.ggml.token_type", np.full(n, _Piece.NORMAL)), np.int64)
        if scores.shape != (n,) or types.shape != (n,):
            raise WeightImportError(
                f"{path}: tokenizer has {n} tokens but {scores.size} scores and {types.size} token types"
            )

        def special(key: str, default: str) -> int:
            value = meta.get(f"tokenizer.ggml.{key}_token_id")
            if value is None:
                value = tokens.index(default) if default in tokens else -1
            if not -1 <= int(value) < n:
                raise WeightImportError(f"{path}: tokenizer.ggml.{key}_token_id={value} is outside the vocabulary")
            return int(value)

        ids = {k: special(k, d) for k, d in
               [("unknown", "<unk>"), ("bos", "<bos>"), ("eos", "<eos>"), ("padding", "<pad>")]}
        if ids["unknown"] < 0:
            raise WeightImportError(f"{path}: tokenizer has no unknown token, which SentencePiece requires")

        model = sp_pb2.ModelProto()
        trainer = model.trainer_spec
        trainer.model_type = sp_pb2.TrainerSpec.BPE
        trainer.vocab_size = n
        trainer.byte_fallback = int((types == _Piece.BYTE).sum()) == 256
        for key, field in [("unknown", "unk"), ("bos", "bos"), ("eos", "eos"), ("padding", "pad")]:
            setattr(trainer, f"{field}_id", ids[key])
            if ids[key] >= 0:
                setattr(trainer, f"{field}_piece", tokens[ids[key]])
        norm = model.normalizer_spec
        norm.name = "identity"
        # llama.cpp defaults a missing flag to True, but no Gemma uses a dummy prefix.
        norm.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
        norm.remove_extra_whitespaces = False
        norm.escape_whitespaces = True

        for i, (token, score, kind_id) in enumerate(zip(tokens, scores.tolist(), types.tolist())):
            if i == ids["unknown"]:
                kind_id = _Piece.UNKNOWN  # llama.cpp marks <unk> CONTROL; SentencePiece needs one UNKNOWN
            elif kind_id == _Piece.UNKNOWN:
                kind_id = _Piece.CONTROL
            elif kind_id == _Piece.USER_DEFINED:
                token = token.replace(" ", _SPACE)
            elif kind_id not in (_Piece.CONTROL, _Piece.UNUSED, _Piece.BYTE):
                kind_id = _Piece.NORMAL
            model.pieces.add(piece=token, score=score, type=kind_id)
        return cls(model, str(path))

    # -- vocabulary -----------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def control_tokens(self) -> frozenset[str]:
        """Strings that, typed literally in text, encode to their one id."""
        return frozenset(self._special_ids)

    def token_to_id(self, token: str) -> int:
        """The id of a vocabulary piece; a KeyError, not <unk>, for anything else.

        SentencePiece answers unknown pieces with the <unk> id, which would
        silently turn a misspelt label into a shared, meaningless class.
        """
        i = self._sp.piece_to_id(token)
        if i == self.unk_id and token != self._sp.id_to_piece(i):
            raise KeyError(f"token {token!r} is not in the vocabulary of {self.source}")
        return i

    def id_to_token(self, id: int) -> str:
        if not 0 <= int(id) < self.vocab_size:
            raise IndexError(f"token id {id} is outside the vocabulary (size {self.vocab_size}) of {self.source}")
        return self._sp.id_to_piece(int(id))

    # -- text -----------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, parse_special: bool = True) -> list[int]:
        """`parse_special=False` for user text: `<eos>` typed in a tweet is five plain
        pieces, as keras-hub's tokenizer (and so an exported preset) reads it, never
        the end-of-sequence id. Only our own prompt template is parsed for specials."""
        ids = [self.bos_id] if add_bos else []
        if self._special_re is None or not parse_special:
            ids += self._sp.encode(text)
        else:
            parts = self._special_re.split(text)  # plain, special, plain, ..., plain
            encoded = self._sp.encode(parts[0::2])
            for i, part in enumerate(parts):
                ids += encoded[i // 2] if i % 2 == 0 else [self._special_ids[part]]
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text for ids; control tokens (pad, bos, eos, turn markers) produce no text."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise IndexError(
                f"token ids {bad[:5]} are outside the vocabulary (size {self.vocab_size}) of {self.source}"
            )
        return self._sp.decode(ids)

    def tokens_of(self, text: str) -> list[str]:
        """The pieces `text` encodes to, for messages like "label 'yes' is ['▁y', 'es']"."""
        return [self._sp.id_to_piece(i) for i in self.encode(text)]

    def is_single_token(self, text: str) -> bool:
        return len(self.encode(text)) == 1

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"
