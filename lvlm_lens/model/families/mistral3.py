"""Mistral 3 / Pixtral (``Mistral3ForConditionalGeneration``): the Pixtral vision tower over
each image at its own (resized) resolution, with 2-D rotary positions over its patch grid, an
RMS norm, a learned merger of ``spatial_merge_size**2`` neighbouring patches and a two-layer
projector, then a Mistral decoder. An image of ``rows x cols`` merged patches becomes, in the
prompt, ``rows`` rows of ``cols`` ``[IMG]`` tokens, each row closed by ``[IMG_BREAK]`` and the
last by ``[IMG_END]`` (HF ``PixtralProcessor``'s layout); the markers are ordinary tokens,
only the ``[IMG]`` tokens carry image embeddings. Tiny checkpoint:
``lvlm_lens/testing/tiny_mistral3.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor, nn

from lvlm_lens.model.families.base import Family
from lvlm_lens.model.vision import VisionSide, grid_coords

#: The row and image end markers of HF's ``PixtralProcessor`` (its defaults, those of every
#: Mistral 3 checkpoint).
IMAGE_BREAK, IMAGE_END = "[IMG_BREAK]", "[IMG_END]"


class Mistral3Vision(VisionSide):
    """Pixtral, the patch merger and the projector: HF's ``get_image_features`` with the
    resized ``image_sizes`` of the image processor. Image ``k`` gives a row-major grid of
    ``(height // s) x (width // s)`` tokens, ``s = patch_size * spatial_merge_size``."""

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        self.vision_tower = hf_model.model.vision_tower
        self.multi_modal_projector = hf_model.model.multi_modal_projector
        config = hf_model.config
        self.merge = config.spatial_merge_size
        self.stride = config.vision_config.patch_size * self.merge

    def preprocess(self, image_processor: Any, images: list[Any]) -> dict[str, Tensor]:
        """The PIL image processor's output, each image resized to a multiple of the merged
        patch (``patch_size * spatial_merge_size``, as ``PixtralProcessor`` asks of it),
        zero-padded to the batch's largest; ``image_sizes`` are the resized sizes."""
        side = self.stride
        return dict(image_processor(images=images, return_tensors="pt",
                                    patch_size={"height": side, "width": side}))  # fmt: skip

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """One ``[rows * cols, d_model]`` tensor per image."""
        sizes = inp.image_sizes.to(self.pixels(inp).device)
        out = self._inner.get_image_features(self.pixels(inp), sizes, return_dict=True)
        return list(out.pooler_output)

    def grid(self, size: list[int]) -> tuple[int, int]:
        """``(rows, cols)`` of merged patches of an image of resized ``(height, width)``."""
        return size[0] // self.stride, size[1] // self.stride

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(0, row, col)`` of every ``[IMG]`` token on its image's own grid."""
        return [grid_coords(*self.grid(s)) for s in processed["image_sizes"].tolist()]

    def placeholder_text(
        self, image_text: Any, processed: Mapping[str, Tensor], index: int, n_tokens: int
    ) -> tuple[str, list[int]]:
        """The image token once per row, each row ended by ``[IMG_BREAK]``, the last by
        ``[IMG_END]``; one run of ``cols`` image tokens per row."""
        rows, cols = self.grid(processed["image_sizes"][index].tolist())
        image = image_text.placeholder
        return (image + IMAGE_BREAK) * (rows - 1) + image + IMAGE_END, [cols] * rows


BY_MODEL_TYPE = {
    "mistral3": Family(
        "Mistral 3 / Pixtral", "Mistral3ForConditionalGeneration", ("mistral",),
        ("mistralai/Mistral-Small-3.1-24B-Instruct-2503",
         "mistralai/Mistral-Small-3.2-24B-Instruct-2506"),
        hf_inputs=("image_sizes",), vision=Mistral3Vision,
        tiny_kinds=("mistral3",),
    ),
}  # fmt: skip
