"""The prompt: the one place that says how a text becomes model input.

The codelab's format is kept (`{instructions}:[{labels}]` SEP `Text:{text}` SEP
`Prediction:`), with two of its pitfalls on Gemma 3 fixed by default: its
`<separator>` is not in the Gemma 3 vocabulary (it tokenises as `<`,
`separator`, `>`), so the default separator is a newline; and the label is not
appended as text followed by a literal `<eos>` (which is not the end token) —
the label is a token id predicted at the position after `Prediction:`.

Truncation cuts the text only: the instruction head and the `Prediction:`
tail are tokenised once and always kept, so no example can lose its label
position (the codelab at length 128 lost 21 of 800 training labels).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # the format itself needs no tokenizer: configs import it without sentencepiece
    from toolkit.models.tokenizer import Tokenizer

TEXT_SLOT = "{text}"


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """How a text is framed. `template` must contain `{text}` exactly once and
    may use `{instructions}`, `{labels}` (the class names joined by `label_separator`) and `{sep}`."""

    instructions: str = "Classify the following text into one of the following classes"
    separator: str = "\n"
    template: str = "{instructions}:[{labels}]{sep}Text:{text}{sep}Prediction:"
    label_separator: str = ","

    def __post_init__(self) -> None:
        if self.template.count(TEXT_SLOT) != 1:
            raise ValueError(f"prompt template must contain {TEXT_SLOT} exactly once: {self.template!r}")

    def head_and_tail(self, class_names: Sequence[str]) -> tuple[str, str]:
        filled = self.template.replace(TEXT_SLOT, "\0").format(
            instructions=self.instructions, labels=self.label_separator.join(class_names), sep=self.separator
        )
        head, tail = filled.split("\0")
        return head, tail


class PromptEncoder:
    """Token ids of prompts for one (format, class names, tokenizer, max_length).

    Head and tail are tokenised once; each text is tokenised alone and cut to
    the room left, so the ids of every prompt end with the same tail.
    """

    def __init__(self, fmt: PromptFormat, class_names: Sequence[str], tokenizer: Tokenizer, max_length: int):
        self.format = fmt
        self.tokenizer = tokenizer
        self.max_length = max_length
        head, tail = fmt.head_and_tail(class_names)
        self.head_ids = [tokenizer.bos_id] + tokenizer.encode(head)
        self.tail_ids = tokenizer.encode(tail)
        self.text_budget = max_length - len(self.head_ids) - len(self.tail_ids)
        if self.text_budget < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for the text: the prompt's instruction part is "
                f"{len(self.head_ids)} tokens and its tail {len(self.tail_ids)}; raise max_length or shorten "
                f"the instructions"
            )
        unknown = [s for s in (fmt.separator,) if s and tokenizer.unk_id in tokenizer.encode(s)]
        if unknown:
            raise ValueError(f"prompt separator {unknown[0]!r} maps to <unk> in this tokenizer; use text it has")

    def encode(self, text: str) -> tuple[list[int], bool]:
        """(ids, truncated): the prompt's ids, never longer than max_length."""
        ids = self.tokenizer.encode(text, parse_special=False)  # user text: no control tokens
        truncated = len(ids) > self.text_budget
        return self.head_ids + ids[: self.text_budget] + self.tail_ids, truncated

    def encode_all(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """(ids per text, number truncated)."""
        out, cut = [], 0
        for t in texts:
            ids, truncated = self.encode(t)
            out.append(ids)
            cut += truncated
        return out, cut


class Questions:
    """The prompts a classifier puts to each text, all answered by the same class tokens.

    Single-label: one question, the prompt's own. Multi-label: one yes/no question per
    category (its `instructions`). With one question every prompt starts with the same
    head, which the scorer runs once per batch (its keys and values feed every row);
    with several, a batch mixes questions, so each prompt keeps its own head (`head`
    is then None)."""

    def __init__(self, fmt: PromptFormat, class_names: Sequence[str], tokenizer: Tokenizer, max_length: int,
                 instructions: Sequence[str] | None = None):
        formats = [fmt] if instructions is None else [dataclasses.replace(fmt, instructions=i) for i in instructions]
        self.encoders = [PromptEncoder(f, class_names, tokenizer, max_length) for f in formats]
        self.head: list[int] | None = self.encoders[0].head_ids if len(self.encoders) == 1 else None

    def __len__(self) -> int:
        return len(self.encoders)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of every (question, text) prompt, question-major, less the shared head."""
        cut = len(self.head or ())
        return [ids[cut:] for enc in self.encoders for ids in enc.encode_all(texts)[0]]


def class_token_ids(tokenizer: Tokenizer, class_names: Sequence[str], verbalizers: dict[str, str] | None = None) -> list[int]:
    """The one token id that stands for each class.

    A class is scored by the logit of a single next token, so its verbaliser
    (the class name unless mapped) must be exactly one token, and no two
    classes may share one. The error lists every offender with its pieces.
    """
    verbalizers = dict(verbalizers or {})
    unknown = sorted(set(verbalizers) - set(class_names))
    if unknown:
        raise ValueError(f"verbalizers name classes {unknown} that are not in the label set {list(class_names)}")
    words = [verbalizers.get(c, c) for c in class_names]
    bad = [(c, w, tokenizer.tokens_of(w)) for c, w in zip(class_names, words) if not tokenizer.is_single_token(w)]
    if bad:
        detail = "; ".join(f"{c!r} -> {w!r} tokenises as {pieces}" for c, w, pieces in bad)
        raise ValueError(
            f"each class must map to exactly one token, but: {detail}. Pass verbalizers={{class: word}} "
            "with single-token words (e.g. 'yes'/'no', or a leading-space form like ' hateful')"
        )
    ids = [tokenizer.encode(w)[0] for w in words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"classes {list(class_names)} map to the same token among {words}; choose distinct words")
    return ids
