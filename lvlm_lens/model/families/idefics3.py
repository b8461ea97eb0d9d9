"""Idefics3 / SmolVLM: a SigLIP-style tower over square tiles plus a global image, pixel
shuffle, a linear projection and a Llama decoder (``model.text_model``). Tiny checkpoint:
``lvlm_lens/testing/tiny_idefics3.py`` (built by ``tiny_families.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lvlm_lens.model.families.base import Family, qk_norm_if_present
from lvlm_lens.model.vision import TiledVision

#: Idefics3's text around image tokens (the HF processor's own strings).
IDEFICS3_FAKE, IDEFICS3_GLOBAL = "<fake_token_around_image>", "<global-img>"


class Idefics3Vision(TiledVision):
    """Idefics3 / SmolVLM: a SigLIP-style tower over square tiles (an image larger than one tile
    is cut into a grid of ``rows x cols`` tiles plus a downscaled global image), pixel shuffle
    and a linear projection; each tile gives the same square grid of tokens.

    In the prompt each tile is ``<fake_token_around_image><row_r_col_c>`` and its image tokens,
    each row of tiles ends with ``\n``, and the global image follows as
    ``\n<fake_token_around_image><global-img>`` + its tokens + ``<fake_token_around_image>``
    (an image of one tile is only the global part), as HF's ``Idefics3Processor`` writes it.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        self.vision_model = hf_model.model.vision_model
        self.connector = hf_model.model.connector
        vc = hf_model.config.vision_config
        self.side = vc.image_size // vc.patch_size // hf_model.config.scale_factor

    def preprocess(self, image_processor: Any, images: list[Any]) -> dict[str, Tensor]:
        """Every tile of every image as a row of ``pixel_values`` (and of
        ``pixel_attention_mask``), tiles per image in ``num_patches``, and each image's grid of
        tiles in ``tile_grid`` (``(0, 0)``: not split)."""
        out = image_processor(images=[images], return_tensors="pt", return_row_col_info=True)
        grid = torch.tensor([out["rows"][0], out["cols"][0]]).T.reshape(-1, 2)
        processed = {"pixel_values": out["pixel_values"][0], "tile_grid": grid,
                     "num_patches": grid.prod(-1) + 1}  # fmt: skip
        if "pixel_attention_mask" in out:
            processed["pixel_attention_mask"] = out["pixel_attention_mask"][0]
        return processed

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """One ``[n_tiles * tokens_per_tile, d_model]`` tensor per image."""
        mask = inp.pixel_attention_mask
        mask = None if mask is None else mask[None].to(inp.pixel_values.device)
        feats = self._inner.get_image_features(self.pixels(inp)[None], mask).pooler_output[0]
        return list(feats.split((inp.image_tiles * self.side**2).tolist()))

    def placeholder_text(
        self, image_text: Any, processed: Mapping[str, Tensor], index: int, n_tokens: int
    ) -> tuple[str, list[int]]:
        """The tile markers with the image token once per tile (HF ``Idefics3Processor``'s
        layout); one run of ``tokens_per_tile`` image tokens per tile."""
        rows, cols = processed["tile_grid"][index].tolist()
        image = image_text.placeholder
        text = "".join(
            "".join(f"{IDEFICS3_FAKE}<row_{r + 1}_col_{c + 1}>{image}" for c in range(cols)) + "\n"
            for r in range(rows)
        )
        text += "\n" if rows else ""
        text += f"{IDEFICS3_FAKE}{IDEFICS3_GLOBAL}{image}{IDEFICS3_FAKE}"
        return text, [self.side**2] * (rows * cols + 1)


BY_MODEL_TYPE = {
    "idefics3": Family(
        "Idefics3 / SmolVLM", "Idefics3ForConditionalGeneration", ("llama",),
        ("HuggingFaceTB/SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-500M-Instruct",
         "HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceM4/Idefics3-8B-Llama3"),
        hf_inputs=("pixel_attention_mask",), vision=Idefics3Vision,
        decoder_spec=qk_norm_if_present, tiny_kinds=("idefics3",),
    ),
}  # fmt: skip
