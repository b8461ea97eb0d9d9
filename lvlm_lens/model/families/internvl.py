"""InternVL: InternViT over 448-px tiles plus a thumbnail, pixel shuffle, an MLP projector and
a plain Qwen2 / Llama / Qwen3 decoder. Tiny checkpoint: ``lvlm_lens/testing/tiny_families.py``.
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from torch import Tensor, nn

from lvlm_lens.model.families.base import Family, ImageText, qk_norm_if_present, token_name
from lvlm_lens.model.vision import TiledVision


class InternVision(TiledVision):
    """InternVL: InternViT over 448-px tiles (an image is cut into a grid of tiles by its aspect
    ratio, plus a thumbnail), pixel shuffle and an MLP projector; each tile gives the same
    square grid of tokens."""

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        self.vision_tower = hf_model.model.vision_tower
        self.multi_modal_projector = hf_model.model.multi_modal_projector
        vc = hf_model.config.vision_config
        side = vc.image_size[0] // vc.patch_size[0]
        self.side = int(side * hf_model.config.downsample_ratio)

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """One ``[n_tiles * tokens_per_tile, d_model]`` tensor per image."""
        feats = self._inner.get_image_features(self.pixels(inp), return_dict=True).pooler_output
        return [f.flatten(0, 1) for f in feats.split(inp.image_tiles.tolist())]



def internvl_image_text(config: Any, tokenizer: Any) -> ImageText:
    """The image token between the tokenizer's ``<img>`` and ``</img>``; ``</img>`` closes it."""
    token = token_name(tokenizer, config.image_token_id)
    start = getattr(tokenizer, "start_image_token", None) or "<img>"
    end = getattr(tokenizer, "end_image_token", None) or "</img>"
    return ImageText(token, token, f"{start}{token}{end}", (end,))


BY_MODEL_TYPE = {
    "internvl": Family(
        "InternVL", "InternVLForConditionalGeneration", ("qwen2", "llama", "qwen3"),
        ("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-2B-hf", "OpenGVLab/InternVL3-8B-hf"),
        vision=InternVision, decoder_spec=qk_norm_if_present, image_text=internvl_image_text,
        tiny_kinds=("internvl",),
    ),
}  # fmt: skip
