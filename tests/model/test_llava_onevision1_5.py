"""LLaVA-OneVision-1.5: tokens of a padded batch = its processor's expansion rule, 1-D
positions (its HF forward ignores M-RoPE), and one token per merged patch (the ViT's CLS
token does not reach the decoder)."""

from __future__ import annotations

import torch

from lvlm_lens import HookedLVLM
from tests.helpers import PROMPTS, noise_image

IMAGES = [noise_image(20, 28, 1), noise_image(30, 14, 2)]


def test_batch_tokens_are_the_processor_expansion_with_1d_positions(tiny_checkpoint):
    """Its processor (``Exaone4_5_Processor``) needs torchvision (its video processor); its
    rule: each ``<|image_pad|>`` becomes ``grid.prod() // merge**2`` copies."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-onevision-1.5", chat_template=True))
    inp = model.prepare(IMAGES, PROMPTS)
    assert (inp.attention_mask == 0).any() and inp.position_ids is None
    assert inp.image_grid[:, 0].tolist() == [1, 1]  # one frame per image (no temporal patches)
    for i in range(2):
        n = int(inp.image_grid[i].prod() // 4)
        assert len(inp.image_coords[i]) == n == int(inp.groups["image"][i].sum())
        expected = model.tokenizer(inp.texts[i].replace("<|image_pad|>", "<|image_pad|>" * n))
        assert inp.input_ids[i][inp.attention_mask[i].bool()].tolist() == expected.input_ids
    real = inp.attention_mask.bool()
    with torch.no_grad():  # HF's default positions are 1-D: cumsum(mask) - 1 equals them
        ref = model.hf_model(**inp.to_hf()).logits
    assert (model(inp) - ref)[real].abs().max() <= 1e-4
