"""Qwen2-VL and Qwen2.5-VL: a ViT over native-resolution patches, a 2x2 patch merger and
M-RoPE. Qwen3-VL reuses its vision side and image text. Tiny checkpoints:
``lvlm_lens/testing/tiny_families.py``.

As for every family, the image embeddings, token counts and positions come from the HF
model's own code (``get_image_features``, ``get_rope_index``); only the bookkeeping is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor, nn

from lvlm_lens.model.config import DecoderSpec
from lvlm_lens.model.families.base import Family, ImageText, token_name
from lvlm_lens.model.vision import VisionSide, grid_coords


class QwenVision(VisionSide):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the ViT over native-resolution patches and the 2x2
    patch merger.

    An image of ``t x h x w`` patches (``image_grid_thw``) gives ``t * (h/m) * (w/m)`` tokens
    in row-major order of the merged grid (``m = spatial_merge_size``); their rotary positions
    are ``(t, h, w)`` triples (M-RoPE), computed by HF's ``get_rope_index``. Qwen3-VL also
    returns DeepStack features: per deepstack layer, merged features of an intermediate vision
    layer, one ``[n_tokens, d_model]`` tensor per image (:meth:`deepstack`).
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        self.visual = hf_model.model.visual
        self.merge = hf_model.config.vision_config.spatial_merge_size

    def _encode(self, inp: Any) -> Any:
        grid = inp.image_grid.to(self.pixels(inp).device)
        return self._inner.get_image_features(self.pixels(inp), grid, return_dict=True)

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """One ``[n_tokens, d_model]`` tensor per image."""
        return list(self._encode(inp).pooler_output)

    def with_deepstack(
        self, inp: Any
    ) -> tuple[list[Tensor], list[list[Float[Tensor, "img_tok d_model"]]] | None]:
        """The image embeddings and, per DeepStack layer, its features per image (``None``
        where the family has none), from one run of the tower."""
        out = self._encode(inp)
        deep = getattr(out, "deepstack_features", None)
        return list(out.pooler_output), None if deep is None else [list(d) for d in deep]

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(frame, row, col)`` of every merged token."""
        out = []
        for t, h, w in processed["image_grid_thw"].tolist():
            out += [grid_coords(h // self.merge, w // self.merge, tile=0)]
            if t != 1:
                raise ValueError(f"an image gave {t} temporal patches; only still images are "
                                 "supported (no video)")
        return out

    def rope_positions(self, input_ids: Tensor, attention_mask: Tensor, inp: Any) -> Tensor:
        """``[3, batch, pos]`` M-RoPE positions of a batch, by HF's ``get_rope_index``."""
        image_token = self.config.image_token_id
        grid = inp.image_grid if inp.image_grid is not None and len(inp.image_grid) else None
        pos, _ = self._inner.get_rope_index(
            input_ids,
            mm_token_type_ids=(input_ids == image_token).int(),
            image_grid_thw=grid,
            attention_mask=attention_mask,
        )
        return pos



def qwen_image_text(config: Any, tokenizer: Any) -> ImageText:
    """``<|image_pad|>``, written ``<|vision_start|><|image_pad|><|vision_end|>`` for the
    generic placeholder; the end marker closes it."""
    token = token_name(tokenizer, config.image_token_id)
    start = token_name(tokenizer, config.vision_start_token_id)
    end = token_name(tokenizer, config.vision_end_token_id)
    return ImageText(token, f"{start}{token}{end}", token, (end,))


def mrope_decoder(hf_model: nn.Module) -> DecoderSpec:
    """A Qwen2 decoder with M-RoPE."""
    return DecoderSpec(rotary="mrope")


#: The HF inputs of every Qwen-VL family.
QWEN_HF_INPUTS = ("image_grid_thw", "mm_token_type_ids")
_QWEN = dict(
    text_types=("qwen2_vl_text", "qwen2_5_vl_text"), hf_inputs=QWEN_HF_INPUTS, vision=QwenVision,
    decoder_spec=mrope_decoder, image_text=qwen_image_text,
)
BY_MODEL_TYPE = {
    "qwen2_vl": Family(
        "Qwen2-VL", "Qwen2VLForConditionalGeneration",
        checkpoints=("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"),
        tiny_kinds=("qwen2-vl",), **_QWEN,
    ),
    "qwen2_5_vl": Family(
        "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration",
        checkpoints=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
        tiny_kinds=("qwen2.5-vl",), **_QWEN,
    ),
}  # fmt: skip
