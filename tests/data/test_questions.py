"""Multi-attribute questions: one-word answers in the vocabulary, minimal pairs, records."""

from __future__ import annotations

from collections import Counter

import pytest

from lvlm_lens.data import VOCABULARY, generate_dataset
from lvlm_lens.data.questions import (
    ATTRIBUTE_ANSWERS,
    ATTRIBUTE_QUESTIONS,
    ATTRIBUTES,
    attribute_answer,
    attribute_image_prompt,
    attribute_records,
    attribute_text_prompt,
    scene_description,
)
from lvlm_lens.testing.tiny import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(words=VOCABULARY)


def test_every_prompt_and_answer_is_in_the_vocabulary(tokenizer):
    unk = tokenizer.unk_token_id
    ex = generate_dataset(40, seed=3)
    for a in ATTRIBUTES:
        for t in range(len(ATTRIBUTE_QUESTIONS[a])):
            for prompt in [attribute_image_prompt(a, t)] + [
                attribute_text_prompt(e, a, t) for e in ex
            ]:
                assert unk not in tokenizer(prompt.replace("<image>", "")).input_ids, prompt
        for word in ATTRIBUTE_ANSWERS[a]:
            assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1


def test_template_zero_differs_in_exactly_one_token_between_attributes(tokenizer):
    rows = [tokenizer(attribute_image_prompt(a)).input_ids for a in ATTRIBUTES]
    assert len({len(r) for r in rows}) == 1
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            assert sum(x != y for x, y in zip(rows[i], rows[j], strict=True)) == 1


def test_answers_follow_the_example():
    for ex in generate_dataset(16, seed=5):
        assert attribute_answer(ex, "shape") == ex.label
        assert attribute_answer(ex, "colour") == ex.appearance["colour"]
        assert attribute_answer(ex, "size") == ex.appearance["size"]
        assert attribute_answer(ex, "background") == ex.appearance["background"]
        words = scene_description(ex).split()
        # a text prompt holds every answer: the attribute question is a copy task in words
        for a in ATTRIBUTES:
            assert attribute_answer(ex, a) in words
        assert words[-2:] == [ex.appearance["background"], "background"]


def test_records_cycle_attributes_and_carry_the_attribute():
    recs = attribute_records(10, seed=2)
    assert [r.meta["attribute"] for r in recs[:4]] == list(ATTRIBUTES)
    assert Counter(r.meta["attribute"] for r in recs) == {"shape": 3, "colour": 3, "size": 2,
                                                          "background": 2}  # fmt: skip
    for r in recs:
        assert r.prompt == attribute_image_prompt(r.meta["attribute"])
        assert r.answer in ATTRIBUTE_ANSWERS[r.meta["attribute"]]
        assert r.mask is not None and r.mask.any()
    assert len({r.id for r in recs}) == 10
    only = attribute_records(3, seed=2, attributes=("size",), template=1)
    assert all(r.prompt == attribute_image_prompt("size", 1) for r in only)


def test_bad_attribute_or_template_is_refused():
    with pytest.raises(ValueError, match="unknown attribute 'weight'"):
        attribute_image_prompt("weight")
    with pytest.raises(ValueError, match="template 5 out of range for 'colour'"):
        attribute_text_prompt("a red star", "colour", 5)
    with pytest.raises(ValueError, match="attributes is empty"):
        attribute_records(2, 0, attributes=())
