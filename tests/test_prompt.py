"""The prompt: codelab format, truncation that never cuts the tail, class tokens."""

import pytest

from toolkit.data.prompt import PromptEncoder, PromptFormat, class_token_ids

LABELS = ("Positive", "Negative")


def _render(fmt: PromptFormat, text: str) -> str:
    head, tail = fmt.head_and_tail(LABELS)
    return head + text + tail


def test_default_format_is_the_codelabs_with_a_real_separator():
    text = _render(PromptFormat(), "you look nice")
    assert text == ("Classify the following text into one of the following classes:[Positive,Negative]\n"
                    "Text:you look nice\nPrediction:")
    codelab = _render(PromptFormat(separator="<separator>"), "x")
    assert codelab == ("Classify the following text into one of the following classes:[Positive,Negative]"
                       "<separator>Text:x<separator>Prediction:")


def test_template_must_hold_the_text_once():
    with pytest.raises(ValueError, match=r"\{text\}"):
        PromptFormat(template="{instructions} no text here")


def test_long_text_is_cut_but_head_and_tail_survive(gemma_tokenizer):
    enc = PromptEncoder(PromptFormat(), LABELS, gemma_tokenizer, max_length=48)
    long_text = "This comment goes on and on about nothing in particular. " * 40
    ids, truncated = enc.encode(long_text)
    assert truncated and len(ids) == 48
    assert ids[: len(enc.head_ids)] == enc.head_ids and ids[0] == gemma_tokenizer.bos_id
    assert ids[-len(enc.tail_ids):] == enc.tail_ids
    assert gemma_tokenizer.decode(enc.tail_ids).endswith("Prediction:")
    short, cut = enc.encode("hi")
    assert not cut and len(short) < 48


def test_every_ethos_style_prompt_keeps_its_prediction_tail(gemma_tokenizer):
    enc = PromptEncoder(PromptFormat(), LABELS, gemma_tokenizer, max_length=128)
    texts = ["word " * n for n in (1, 50, 200, 3000)]
    all_ids, n_cut = enc.encode_all(texts)
    assert n_cut == 2
    assert all(x[-len(enc.tail_ids):] == enc.tail_ids and len(x) <= 128 for x in all_ids)


def test_max_length_too_small_for_the_instructions_is_explained(gemma_tokenizer):
    with pytest.raises(ValueError, match="no room for the text"):
        PromptEncoder(PromptFormat(), LABELS, gemma_tokenizer, max_length=10)


def test_class_tokens_are_single_tokens_or_a_clear_error(gemma_tokenizer):
    ids = class_token_ids(gemma_tokenizer, LABELS)
    assert ids == [gemma_tokenizer.token_to_id("Positive"), gemma_tokenizer.token_to_id("Negative")]
    with pytest.raises(ValueError, match=r"'hateful'.*\['h', 'ateful'\]"):
        class_token_ids(gemma_tokenizer, ("safe", "hateful"))
    assert class_token_ids(gemma_tokenizer, ("safe", "hateful"), {"hateful": "hate"})[1] == \
        gemma_tokenizer.token_to_id("hate")
    with pytest.raises(ValueError, match="same token"):
        class_token_ids(gemma_tokenizer, ("a", "b"), {"a": "yes", "b": "yes"})
    with pytest.raises(ValueError, match="not in the label set"):
        class_token_ids(gemma_tokenizer, ("a", "b"), {"c": "yes"})
