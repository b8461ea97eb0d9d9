"""PaliGemma 2: SigLIP (one fixed square of patches per image), a linear projector and a
Gemma 2 decoder (softcapped attention scores and logits, ``query_pre_attn_scalar``, sandwich
``1 + w`` norms, sliding / global layers) under a prefix-LM mask: the image and prompt tokens
attend to each other both ways, generated tokens causally; rotary positions start at 1.
Tiny checkpoint: ``lvlm_lens/testing/tiny_paligemma.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn

from lvlm_lens.model.config import DecoderSpec
from lvlm_lens.model.families.base import (
    Family,
    ImageText,
    language_model,
    softcaps,
    token_name,
)
from lvlm_lens.model.vision import VisionSide, grid_coords

#: HF's PaliGemma counts rotary positions from 1.
POSITION_OFFSET = 1


class PaliGemmaVision(VisionSide):
    """SigLIP's last hidden state through the linear projector: one ``side x side`` grid."""

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        self.vision_tower = hf_model.model.vision_tower
        self.multi_modal_projector = hf_model.model.multi_modal_projector
        vc = hf_model.config.vision_config
        self.side = vc.image_size // vc.patch_size

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(0, row, col)`` of each patch, the same for every image."""
        return [grid_coords(self.side, self.side) for _ in range(sum(images_per_example))]


def paligemma_decoder(hf_model: nn.Module) -> DecoderSpec:
    """Gemma 2 under a prefix-LM mask, positions from 1."""
    scale = float(getattr(language_model(hf_model).embed_tokens, "scalar_embed_scale", 1.0))
    return DecoderSpec(norm_offset=1.0, sandwich_norms=True, embed_scale=scale,
                       bidirectional_prefix=True, position_offset=POSITION_OFFSET,
                       **softcaps(hf_model.config.text_config))


def paligemma_image_text(config: Any, tokenizer: Any) -> ImageText:
    """``<image>`` in prompts, then BOS after it and ``\\n`` after the prompt (the processor's
    ``<image>...<image><bos>prompt\\n``)."""
    token = token_name(tokenizer, config.image_token_id)
    return ImageText(token, token, f"{token}{tokenizer.bos_token}", prompt_end="\n")


def paligemma_hf_inputs(inp: Any, kw: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF's keywords: every prompt token in the prefix (``token_type_ids`` 0, as the processor
    gives without a suffix), explicit positions counted from 1."""
    kw["token_type_ids"] = torch.zeros_like(inp.input_ids)
    if "position_ids" in kw:
        kw["position_ids"] = kw["position_ids"] + POSITION_OFFSET
    return kw


BY_MODEL_TYPE = {
    "paligemma": Family(
        "PaliGemma 2", "PaliGemmaForConditionalGeneration", ("gemma2",),
        ("google/paligemma2-3b-pt-224", "google/paligemma2-3b-mix-448",
         "google/paligemma2-10b-pt-896"),
        hf_inputs=("token_type_ids",), vision=PaliGemmaVision, size_dependent_layout=False,
        decoder_spec=paligemma_decoder, image_text=paligemma_image_text,
        hf_extra=paligemma_hf_inputs, own_mask=True, tiny_kinds=("paligemma2",),
    ),
}  # fmt: skip
