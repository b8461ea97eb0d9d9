"""The vision side: the checkpoint's own HF vision tower, projector and image packing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

#: ``image_coords`` entry of an image-newline token and of a vision CLS token.
NEWLINE, CLS = -1, -2


def grid_coords(rows: int, cols: int, tile: int = 0) -> Int[Tensor, "tok 3"]:
    """``(tile, row, col)`` of a row-major ``rows x cols`` grid of image tokens."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([torch.full((rows * cols,), tile), r.flatten(), c.flatten()], dim=-1)


class VisionSide(nn.Module):
    """Projected image embeddings from pixels, computed by the HF model's own modules.

    Subclasses register the HF vision modules (shared with the HF model, so ``.to()`` moves
    them) and implement :meth:`forward` and :meth:`token_layout` with HF's own code.

    Attributes:
        tiled: Image tokens come in several tiles (``to_str_tokens`` shows the tile).
        extra_keys: Image-processor outputs (one row per image) kept in
            ``LVLMInput.image_extra`` for this vision side.
    """

    tiled = False
    extra_keys: tuple[str, ...] = ()

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        # not registered: its LM is ours (Llama 4 has no inner model: the whole one)
        inner = hf_model.model if hasattr(hf_model, "model") else hf_model
        object.__setattr__(self, "_inner", inner)
        self.config = hf_model.config
        self.lvlm_type = hf_model.config.model_type

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """Embed every image of an :class:`~lvlm_lens.LVLMInput`; one ``[n_tokens, d_model]``
        tensor per image. By default HF's ``get_image_features(pixel_values)``, one row of its
        ``pooler_output`` per image (Gemma 3, PaliGemma); families with more inputs override it."""
        out = self._inner.get_image_features(self.pixels(inp), return_dict=True)
        return list(out.pooler_output)

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(tile, row, col)`` of every image token, per image, without running the tower.
        Tile 0 is the one that shows the whole image (the only tile of an untiled image).

        Args:
            processed: The image processor's output, with ``image_sizes`` (original
                ``(height, width)``) filled in.
            images_per_example: How many images each example holds.
        """
        raise NotImplementedError

    def preprocess(self, image_processor: Any, images: list[Any]) -> dict[str, Tensor]:
        """The image processor's output for all images of a batch (a flat list, in order)."""
        return dict(image_processor(images=images, return_tensors="pt"))

    def placeholder_text(
        self, image_text: Any, processed: Mapping[str, Tensor], index: int, n_tokens: int
    ) -> tuple[str, list[int]]:
        """What the placeholder of image ``index`` becomes before tokenization, holding the
        image token once per run of consecutive image tokens, and the length of each run (one
        run of ``n_tokens`` here; Idefics3: one per tile, with tile markers between them)."""
        return image_text.expansion, [n_tokens]

    def with_deepstack(self, inp: Any) -> tuple[list[Tensor], list[list[Tensor]] | None]:
        """The image embeddings and any DeepStack features (Qwen3-VL; ``None`` here)."""
        return self(inp), None

    def rope_positions(self, input_ids: Tensor, attention_mask: Tensor, inp: Any) -> Tensor | None:
        """Rotary positions of a batch when they are not ``cumsum(mask) - 1`` (M-RoPE)."""
        return None

    def image_side(self, inp: Any) -> Float[Tensor, "batch image_pos d_model"]:
        """Cross-attention families (Llama 3.2 Vision): the projected vision states each
        example's cross-attention layers read."""
        raise NotImplementedError(f"{self.lvlm_type} has no cross-attention image side")

    def cross_allowed(self, inp: Any) -> Tensor:
        """Cross-attention families: ``[batch, pos, image_pos]``, which image-side tokens each
        token may read."""
        raise NotImplementedError(f"{self.lvlm_type} has no cross-attention image side")

    def pixels(self, inp: Any) -> Tensor:
        """``inp.pixel_values`` on the tower's device and dtype."""
        p = next(self.parameters())
        return inp.pixel_values.to(p.device, p.dtype)


class LlavaVision(VisionSide):
    """LLaVA-1.5, and the base of LLaVA-NeXT / OneVision: vision tower, projector,
    ``image_newline`` (where the model has one); feature-layer selection is HF's
    ``get_image_features``. Every image gives one ``tile_grid x tile_grid`` grid of patches
    (and a CLS token with ``vision_feature_select_strategy="full"``)."""

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        inner = hf_model.model
        self.vision_tower = inner.vision_tower
        self.multi_modal_projector = inner.multi_modal_projector
        if getattr(inner, "image_newline", None) is not None:
            self.image_newline = inner.image_newline

    def image_kwargs(self, inp: Any) -> dict[str, Any]:
        """Keywords of HF's ``get_image_features`` beyond the pixel values (none here)."""
        return {}

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """Embed every image of a batch; returns one ``[n_tokens, d_model]`` tensor per image."""
        out = self._inner.get_image_features(
            pixel_values=self.pixels(inp), return_dict=True, **self.image_kwargs(inp)
        )
        return list(out.pooler_output)

    @property
    def tile_grid(self) -> int:
        """Patches per side of one vision-tower tile."""
        vc = self.config.vision_config
        return vc.image_size // vc.patch_size

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(0, row, col)`` of every image token (a CLS token first where the feature layer
        keeps it), the same for every image."""
        tile = grid_coords(self.tile_grid, self.tile_grid)
        if self.config.vision_feature_select_strategy == "full":
            tile = torch.cat([torch.full((1, 3), CLS), tile])
        return [tile.clone() for _ in range(sum(images_per_example))]


class TiledVision(VisionSide):
    """A family that cuts an image into a grid of square tiles plus one whole-image tile after
    them (InternVL's thumbnail, Idefics3's global image), each tile giving the same
    ``side x side`` grid of tokens; ``processed["num_patches"]`` holds the tiles per image."""

    tiled = True
    side: int

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(tile, row, col)`` of every token, in the processor's order: the grid of tiles
        row by row (tiles ``1..n-1``), then the whole image, labelled tile 0 as the whole-image
        tile is in every family (LLaVA-NeXT's base image)."""
        out = []
        for n in processed["num_patches"].tolist():
            labels = [*range(1, n), 0]
            out.append(torch.cat([grid_coords(self.side, self.side, tile=t) for t in labels]))
        return out
