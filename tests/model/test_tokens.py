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


class CountingTokenizer:
    """A tokenizer that counts its calls: ids ``[bos, 7]`` when it prepends BOS, else ``[7]``."""

    def __init__(self, bos_token_id, prepends):
        self.bos_token_id, self.add_bos_token, self.calls = bos_token_id, prepends, 0

    def __call__(self, text):
        self.calls += 1
        ids = [self.bos_token_id, 7] if self.add_bos_token else [7]
        return type("Encoding", (), {"input_ids": ids})()


def test_tokenizer_prepends_bos_is_asked_once_per_tokenizer(model):
    from lvlm_lens.model.tokens import tokenizer_prepends_bos

    yes, no = CountingTokenizer(1, True), CountingTokenizer(1, False)
    for _ in range(3):
        assert tokenizer_prepends_bos(yes) is True
        assert tokenizer_prepends_bos(no) is False
    assert yes.calls == no.calls == 1
    yes.add_bos_token = False  # a changed setting is asked again
    assert tokenizer_prepends_bos(yes) is False and yes.calls == 2
    assert tokenizer_prepends_bos(CountingTokenizer(None, True)) is False  # no BOS token
    # a real tokenizer: the BOS is there exactly once whether to_tokens asks once or again
    first = model.to_tokens("what is this ?")[0].tolist()
    again = model.to_tokens("what is this ?")[0].tolist()
    bos = model.tokenizer.bos_token_id
    assert first == again and first[0] == bos and first.count(bos) == 1
