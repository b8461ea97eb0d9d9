"""The prefix-LM mask (PaliGemma: image + prompt attend both ways, the rest causally) against
HF's mask functions, with left padding and a sliding window shorter than the prefix."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from lvlm_lens.model.masks import allowed_keys, prefix_blocks

WINDOW = 3


def _hf_allowed(fn, mask, token_types):
    config = transformers.Gemma2Config(sliding_window=WINDOW)
    config._attn_implementation = "eager"
    embeds = torch.zeros(*mask.shape, 4)
    pos = torch.arange(mask.shape[1])[None]
    additive = fn(config=config, inputs_embeds=embeds, attention_mask=mask, cache=None,
                  position_ids=pos, block_sequence_ids=torch.where(token_types == 0, 0, -1))
    return additive[:, 0] == 0


@pytest.fixture
def batch():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]])
    types = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1]])  # 1: suffix
    return mask, types


@pytest.mark.parametrize("window", [None, WINDOW])
def test_prefix_mask_equals_hf(batch, window):
    mask, types = batch
    blocks = prefix_blocks((types == 0) & (mask == 1))
    ours = allowed_keys(mask, mask.shape[1], window, blocks, windowed_blocks=False)
    fn = create_causal_mask if window is None else create_sliding_window_causal_mask
    theirs = _hf_allowed(fn, mask, types)
    real = mask.bool()  # rows of padded queries are never read
    assert torch.equal(ours[real], theirs[real])
    # the prefix attends both ways, the suffix causally
    assert ours[0, 0, 4] and not ours[0, 5, 6]
    if window is not None:  # a prefix token sees its whole prefix past the window (HF's order)
        assert ours[0, 4, 0] and not ours[0, 7, 3]
        windowed = allowed_keys(mask, mask.shape[1], window, blocks)  # Gemma 3's order
        assert not windowed[0, 4, 0]
