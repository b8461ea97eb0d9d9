"""TransformerLens' tokenizer views: to_str_tokens on batches, to_string, to_single_token."""

from __future__ import annotations

import pytest

from lvlm_lens import HookedLVLM
from tests.helpers import PROMPTS, noise_image


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("llava-next-vicuna"))


def test_to_str_tokens_of_a_batch_gives_one_list_per_example(model):
    inp = model.prepare([noise_image(20, 28, 1), noise_image(20, 20, 2)], PROMPTS)
    assert (inp.attention_mask == 0).any()  # padded: each list drops its own padding
    per_example = model.to_str_tokens(inp)
    assert len(per_example) == 2
    for i in range(2):
        alone = model.to_str_tokens(inp.select(i))  # a batch of one: a flat list, as in TL
        assert per_example[i] == alone == model.to_str_tokens(inp, i)
        assert isinstance(alone[0], str) and len(alone) == int(inp.attention_mask[i].sum())
        assert alone[-2:] == ["ASSISTANT", ":"] and "<img 0:0,0>" in alone
    assert per_example[0] != per_example[1]
    ids = inp.input_ids  # a [batch, pos] tensor: one list per row, padding kept
    rows = model.to_str_tokens(ids)
    padded = int((inp.attention_mask == 0).any(1).nonzero()[0, 0])
    assert len(rows) == 2 and rows[padded][0] == "<pad>" and len(rows[1]) == ids.shape[1]
    assert model.to_str_tokens(ids[0]) == rows[0] == model.to_str_tokens(ids, 0)


def test_to_str_tokens_of_text(model):
    assert model.to_str_tokens("what is this ?") == ["<s>", "what", "is", "this", "?"]
    assert model.to_str_tokens(["a cat", "the red dog"]) == [
        ["<s>", "a", "cat"],
        ["<s>", "the", "red", "dog"],
    ]


def test_to_string(model):
    ids = model.to_tokens(["a cat", "the red dog"], prepend_bos=False)
    assert model.to_string(ids[1]) == "the red dog"
    assert model.to_string(ids) == ["<pad> a cat", "the red dog"]
    inp = model.prepare(None, ["USER: a cat ? ASSISTANT:", "USER: the red dog ? ASSISTANT:"])
    assert model.to_string(inp) == ["<s> USER : a cat ? ASSISTANT :",
                                    "<s> USER : the red dog ? ASSISTANT :"]
    assert model.to_single_token("dog") == int(ids[1, -1])


def test_to_string_keeps_spaces_whatever_the_tokenizer_cleans(model, monkeypatch):
    """As TransformerLens: decoded text keeps " ?" even where the tokenizer's default would
    clean it up to "?" (many real tokenizers do)."""
    monkeypatch.setattr(model.tokenizer, "clean_up_tokenization_spaces", True)
    ids = model.to_tokens("a cat ?", prepend_bos=False)[0]
    assert model.tokenizer.decode(ids.tolist()) == "a cat?"  # the default would clean
    assert model.to_string(ids) == "a cat ?" and model.to_string(ids[None]) == ["a cat ?"]
