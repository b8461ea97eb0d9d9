"""Gemma 3: SigLIP, pooling to a fixed square grid, a Gemma decoder (``1 + w`` norms, sandwich
norms, q/k norms, scaled embeddings, RoPE per layer type, bidirectional attention within an
image). Tiny checkpoint: ``lvlm_lens/testing/tiny_families.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxtyping import Int
from torch import Tensor, nn

from lvlm_lens.model.config import DecoderSpec
from lvlm_lens.model.families.base import Family, ImageText, language_model, token_name
from lvlm_lens.model.vision import VisionSide, grid_coords


class Gemma3Vision(VisionSide):
    """Gemma 3: SigLIP, then average pooling to ``mm_tokens_per_image`` tokens, a norm and a
    linear projection. Every image gives the same square grid of tokens."""

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        self.vision_tower = hf_model.model.vision_tower
        self.multi_modal_projector = hf_model.model.multi_modal_projector
        self.side = self.multi_modal_projector.tokens_per_side

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(0, row, col)`` on the pooled grid, the same for every image."""
        crops = processed.get("num_crops")
        if crops is not None and bool((crops > 0).any()):
            raise ValueError("pan-and-scan crops are not supported: load the image processor "
                             "with do_pan_and_scan=False (Gemma 3's default)")
        return [grid_coords(self.side, self.side) for _ in range(sum(images_per_example))]


def gemma3_decoder(hf_model: nn.Module) -> DecoderSpec:
    """Gemma's decoder, with the embedding scale of the HF embedding."""
    scale = float(getattr(language_model(hf_model).embed_tokens, "scalar_embed_scale", 1.0))
    return DecoderSpec(
        norm_offset=1.0,
        sandwich_norms=True,
        qk_norm=True,
        embed_scale=scale,
        rope_per_layer_type=True,
        bidirectional_image=True,
    )


def gemma3_image_text(config: Any, tokenizer: Any) -> ImageText:
    """``<start_of_image>`` in prompts; ``\\n\\n<start_of_image><image_soft_token>
    <end_of_image>\\n\\n`` before tokenization; the end marker closes it."""
    token = token_name(tokenizer, config.image_token_id)
    boi = token_name(tokenizer, config.boi_token_index)
    eoi = token_name(tokenizer, config.eoi_token_index)
    return ImageText(boi, boi, f"\n\n{boi}{token}{eoi}\n\n", (eoi,))


BY_MODEL_TYPE = {
    "gemma3": Family(
        "Gemma 3", "Gemma3ForConditionalGeneration", ("gemma3_text",),
        ("google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"),
        hf_inputs=("token_type_ids",), vision=Gemma3Vision, size_dependent_layout=False,
        decoder_spec=gemma3_decoder, image_text=gemma3_image_text, tiny_kinds=("gemma3",),
    ),
}  # fmt: skip
