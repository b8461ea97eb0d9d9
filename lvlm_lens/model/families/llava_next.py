"""LLaVA-NeXT: LLaVA's tower over any-resolution tiles (a base image plus a grid of tiles by
the image's aspect ratio) with image-newline tokens. Tiny checkpoints:
``lvlm_lens/testing/tiny.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from lvlm_lens.model.families.base import Family
from lvlm_lens.model.vision import NEWLINE, LlavaVision, grid_coords


class LlavaNextVision(LlavaVision):
    """LLaVA-NeXT: any-resolution packing is HF's ``get_image_features`` (with the image sizes)
    and, for the token layout, HF's own ``pack_image_features`` applied to coordinates."""

    tiled = True

    def image_kwargs(self, inp: Any) -> dict[str, Any]:
        """The original image sizes."""
        return {"image_sizes": inp.image_sizes}

    def tiles(self, size: list[int], is_multi: bool) -> int:
        """Tiles of an image of ``(height, width)`` ``size`` (base image included)."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        return image_size_to_num_patches(
            size, self.config.image_grid_pinpoints, self.config.vision_config.image_size
        )

    def pack(self, feats: list[Tensor], image_sizes: Tensor, newline: Tensor) -> list[Tensor]:
        """HF's ``pack_image_features`` of per-tile features."""
        packed, _ = self._inner.pack_image_features(
            feats, image_sizes, self.config.vision_feature_select_strategy, newline
        )
        return packed

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(tile, row, col)`` of every image token, per image, without running the tower.

        Any-resolution packing is HF's own ``pack_image_features`` applied to coordinate
        features, so token counts and order are exactly the model's.
        """
        image_sizes = processed["image_sizes"]
        tile = grid_coords(self.tile_grid, self.tile_grid).float()
        multi = [n > 1 for n in images_per_example for _ in range(n)]
        feats = []
        for size, is_multi in zip(image_sizes.tolist(), multi, strict=True):
            n = self.tiles(size, is_multi)
            t = tile.repeat(n, 1, 1)
            t[:, :, 0] = torch.arange(n, dtype=torch.float32)[:, None]
            feats.append(t)
        newline = torch.full((3,), float(NEWLINE))
        packed = self.pack(feats, image_sizes.cpu(), newline)
        return [p.round().long() for p in packed]


BY_MODEL_TYPE = {
    "llava_next": Family(
        "LLaVA-NeXT", "LlavaNextForConditionalGeneration", ("llama", "mistral", "qwen2"),
        ("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"),
        hf_inputs=("image_sizes",), vision=LlavaNextVision,
        tiny_kinds=("llava-next-mistral", "llava-next-vicuna"),
    ),
}  # fmt: skip
