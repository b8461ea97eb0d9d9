"""Vision sides of the families with their own vision encoders: Qwen2-VL / 2.5-VL / 3-VL,
Gemma 3, InternVL, Idefics3 / SmolVLM.

As for LLaVA, the image embeddings, token counts and positions come from the HF model's own
code (``get_image_features``, ``get_rope_index``); only the bookkeeping is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

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


class Gemma3Vision(VisionSide):
    """Gemma 3: SigLIP, then average pooling to ``mm_tokens_per_image`` tokens, a norm and a
    linear projection. Every image gives the same square grid of tokens."""

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        self.vision_tower = hf_model.model.vision_tower
        self.multi_modal_projector = hf_model.model.multi_modal_projector
        self.side = self.multi_modal_projector.tokens_per_side

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """One ``[n_tokens, d_model]`` tensor per image."""
        out = self._inner.get_image_features(self.pixels(inp), return_dict=True)
        return list(out.pooler_output)

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(0, row, col)`` on the pooled grid, the same for every image."""
        crops = processed.get("num_crops")
        if crops is not None and bool((crops > 0).any()):
            raise ValueError("pan-and-scan crops are not supported: load the image processor "
                             "with do_pan_and_scan=False (Gemma 3's default)")
        return [grid_coords(self.side, self.side) for _ in range(sum(images_per_example))]


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
