"""LLaVA-OneVision: LLaVA-NeXT's any-resolution tiles with a Qwen2 decoder; an image of a
multi-image example is one base tile. Tiny checkpoint: ``lvlm_lens/testing/tiny.py``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lvlm_lens.model.families.base import Family
from lvlm_lens.model.families.llava_next import LlavaNextVision


class LlavaOnevisionVision(LlavaNextVision):
    """LLaVA-OneVision: as LLaVA-NeXT, plus the images per example for HF, one tile per image
    of a multi-image example, and HF's OneVision packing (``vision_aspect_ratio``)."""

    def image_kwargs(self, inp: Any) -> dict[str, Any]:
        """The original image sizes and the number of images of each example with images."""
        return {
            "image_sizes": inp.image_sizes,
            "batch_num_images": torch.tensor([n for n in inp.images_per_example if n > 0]),
        }

    def tiles(self, size: list[int], is_multi: bool) -> int:
        """Tiles of an image (one, the base image, in a multi-image example)."""
        return 1 if is_multi else super().tiles(size, is_multi)

    def pack(self, feats: list[Tensor], image_sizes: Tensor, newline: Tensor) -> list[Tensor]:
        """HF's OneVision ``pack_image_features`` of per-tile features."""
        packed, _ = self._inner.pack_image_features(
            feats, image_sizes, newline, self.config.vision_aspect_ratio
        )
        return packed


BY_MODEL_TYPE = {
    "llava_onevision": Family(
        "LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration", ("qwen2",),
        ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
        hf_inputs=("image_sizes", "batch_num_images"), vision=LlavaOnevisionVision,
        tiny_kinds=("llava-onevision-qwen2",),
    ),
}  # fmt: skip
