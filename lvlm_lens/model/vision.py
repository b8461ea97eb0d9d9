"""The vision side: the checkpoint's own HF vision tower, projector and image packing."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

#: ``image_coords`` entry of an image-newline token and of a vision CLS token.
NEWLINE, CLS = -1, -2


class VisionSide(nn.Module):
    """Projected image embeddings from pixels, computed by the HF model's own modules.

    The vision tower, projector and ``image_newline`` are registered here (shared with the HF
    model, so ``.to()`` moves them); feature-layer selection and any-resolution packing are
    HF's ``get_image_features``.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        inner = hf_model.model
        self.vision_tower = inner.vision_tower
        self.multi_modal_projector = inner.multi_modal_projector
        if getattr(inner, "image_newline", None) is not None:
            self.image_newline = inner.image_newline
        object.__setattr__(self, "_inner", inner)  # not registered: its language model is ours
        self.config = hf_model.config
        self.lvlm_type = hf_model.config.model_type

    def forward(
        self,
        pixel_values: Tensor,
        image_sizes: Int[Tensor, "n_images 2"] | None,
        images_per_example: list[int],
    ) -> list[Float[Tensor, "img_tok d_model"]]:
        """Embed every image of a batch; returns one ``[n_tokens, d_model]`` tensor per image."""
        kwargs = {}
        if self.lvlm_type != "llava":
            kwargs["image_sizes"] = image_sizes
        if self.lvlm_type == "llava_onevision":
            kwargs["batch_num_images"] = torch.tensor([n for n in images_per_example if n > 0])
        out = self._inner.get_image_features(pixel_values=pixel_values, return_dict=True, **kwargs)
        return list(out.pooler_output)

    @property
    def tile_grid(self) -> int:
        """Patches per side of one vision-tower tile."""
        vc = self.config.vision_config
        return vc.image_size // vc.patch_size

    def token_layout(
        self, image_sizes: Int[Tensor, "n_images 2"] | None, images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(tile, row, col)`` of every image token, per image, without running the tower.

        Any-resolution packing is HF's own ``pack_image_features`` applied to coordinate
        features, so token counts and order are exactly the model's.
        """
        n_images = sum(images_per_example)
        g = self.tile_grid
        rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        tile = torch.stack([torch.zeros(g * g), rows.flatten(), cols.flatten()], dim=-1).float()
        if self.lvlm_type == "llava":
            if self.config.vision_feature_select_strategy == "full":
                tile = torch.cat([torch.full((1, 3), float(CLS)), tile])
            return [tile.long() for _ in range(n_images)]
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        multi = [n > 1 for n in images_per_example for _ in range(n)]
        feats = []
        for size, is_multi in zip(image_sizes.tolist(), multi, strict=True):
            n = 1
            if not (self.lvlm_type == "llava_onevision" and is_multi):
                n = image_size_to_num_patches(
                    size, self.config.image_grid_pinpoints, self.config.vision_config.image_size
                )
            t = tile.repeat(n, 1, 1)
            t[:, :, 0] = torch.arange(n, dtype=torch.float32)[:, None]
            feats.append(t)
        newline = torch.full((3,), float(NEWLINE))
        if self.lvlm_type == "llava_next":
            packed, _ = self._inner.pack_image_features(
                feats, image_sizes.cpu(), self.config.vision_feature_select_strategy, newline
            )
        else:
            packed, _ = self._inner.pack_image_features(
                feats, image_sizes.cpu(), newline, self.config.vision_aspect_ratio
            )
        return [p.round().long() for p in packed]
