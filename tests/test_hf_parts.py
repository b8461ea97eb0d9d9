"""The word-level tokenizer shared by the toy and the tiny checkpoints (lvlm_lens.hf_parts)."""

import pytest

from lvlm_lens.hf_parts import SPECIAL_TOKENS, word_level_tokenizer


def test_word_level_tokenizer_splits_as_documented():
    tok = word_level_tokenizer(("\n", "USER", ":", "what"))
    ids = tok("USER: <image>\nwhat zebra")["input_ids"]
    n = len(SPECIAL_TOKENS)
    # <s> USER : <image> \n what <unk>: words after the specials, in the order given
    assert ids == [2, n + 1, n + 2, 4, n + 0, n + 3, 0]


def test_word_level_tokenizer_refuses_a_repeated_word():
    with pytest.raises(ValueError, match="duplicate entries"):
        word_level_tokenizer(("cat", "cat"))
