"""Llama 3.2 Vision (``MllamaForConditionalGeneration``): a tiled ViT with gated global layers
and aspect-ratio embeddings, a linear projector, and a Llama decoder whose image enters only
through gated cross-attention layers (:mod:`~lvlm_lens.model.cross_attention`). Each image is
one ``<|image|>`` token of the sequence; its tiles (a CLS token and ``side x side`` patches
each) are the *image side* the cross-attention layers read. Tiny checkpoint:
``lvlm_lens/testing/tiny_mllama.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from lvlm_lens.model.config import CrossAttentionSpec, DecoderSpec
from lvlm_lens.model.families.base import Family, ImageText, token_name
from lvlm_lens.model.vision import CLS, VisionSide, grid_coords

#: Per-image processor outputs the vision side keeps (``LVLMInput.image_extra``).
EXTRA_KEYS = ("aspect_ratio_ids", "aspect_ratio_mask", "num_tiles")


def hf_layout(inp: Any) -> dict[str, Tensor]:
    """HF's per-example image inputs: ``pixel_values`` ``[batch, max_images, max_tiles, 3, h,
    w]``, ``aspect_ratio_ids`` ``[batch, max_images]`` and ``aspect_ratio_mask`` ``[batch,
    max_images, max_tiles]``, each example's images first, then padding as the processor pads
    (zero pixels, aspect-ratio id 0, the first tile unmasked)."""
    pixels, extra = inp.pixel_values, inp.image_extra
    b, n = len(inp), max(inp.images_per_example)
    values = pixels.new_zeros(b, n, *pixels.shape[1:])
    ids = extra["aspect_ratio_ids"].new_zeros(b, n)
    mask = extra["aspect_ratio_mask"].new_zeros(b, n, pixels.shape[1])
    mask[:, :, 0] = 1
    for i in range(b):
        sl = inp.image_slice(i)
        k = sl.stop - sl.start
        values[i, :k], ids[i, :k] = pixels[sl], extra["aspect_ratio_ids"][sl]
        mask[i, :k] = extra["aspect_ratio_mask"][sl]
    return {"pixel_values": values, "aspect_ratio_ids": ids, "aspect_ratio_mask": mask}


def tiles_per_example(inp: Any) -> list[list[int]]:
    """Per example, each image's tile count (0 for the images it has fewer than others)."""
    n = inp.image_extra["num_tiles"].tolist()
    tiles = [n[inp.image_slice(i)] for i in range(len(inp))]
    return [t + [0] * (max(map(len, tiles)) - len(t)) for t in tiles]


def cross_attention_tiles(
    input_ids: Int[Tensor, "batch pos"],
    image_token_id: int,
    tiles: list[list[int]],
    max_tiles: int,
) -> Bool[Tensor, "batch pos max_images max_tiles"]:
    """Which tiles of which image each token reads (HF ``MllamaProcessor``'s rule): an image's
    ``<|image|>`` token and the tokens after it, up to the next image's token (images written
    one right after another are read together, up to the end of the last one's span), read
    that image's real tiles. ``tiles``: per example, each image's tile count."""
    b, s = input_ids.shape
    out = torch.zeros(b, s, max(len(t) for t in tiles), max_tiles, dtype=torch.bool)
    for i, row in enumerate(input_ids.tolist()):
        locs = [j for j, t in enumerate(row) if t == image_token_id]
        ends = locs[1:] + [s] if locs else []  # a text-only row reads no tile
        for j in reversed(range(len(locs) - 1)):
            if ends[j] == locs[j] + 1:  # the next image follows at once: read on with it
                ends[j] = ends[j + 1]
        for j, (start, end) in enumerate(zip(locs, ends, strict=True)):
            out[i, start:end, j, : tiles[i][j]] = True
    return out


class MllamaVision(VisionSide):
    """The tiled vision model and projector. Every image is cut into up to ``max_tiles`` tiles
    of the tower's square (its aspect ratio picks the grid); its image side is ``max_tiles``
    blocks of ``1 + side**2`` states (each tile's CLS token, then its patches row-major), the
    padded tiles included (HF computes them and masks them from the queries)."""

    tiled = True
    extra_keys = EXTRA_KEYS

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        self.vision_model = hf_model.model.vision_model
        self.multi_modal_projector = hf_model.model.multi_modal_projector
        vc = hf_model.config.vision_config
        self.side = vc.image_size // vc.patch_size
        self.max_tiles = vc.max_num_tiles
        self.per_tile = self.side**2 + 1

    def preprocess(self, image_processor: Any, images: list[Any]) -> dict[str, Tensor]:
        """Per image: its tiles ``[max_tiles, 3, h, w]`` (zero-padded), aspect-ratio id and
        mask, and ``num_tiles``."""
        out = image_processor(images=[[im] for im in images], return_tensors="pt")
        return {"pixel_values": out["pixel_values"][:, 0],
                "aspect_ratio_ids": out["aspect_ratio_ids"][:, 0],
                "aspect_ratio_mask": out["aspect_ratio_mask"][:, 0],
                "num_tiles": torch.tensor([n[0] for n in out["num_tiles"]])}  # fmt: skip

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """Per image, ``(tile, row, col)`` of each of its image-side states: tiles numbered
        from 1 in the processor's row-major order (no tile shows the whole image), each tile's
        CLS state ``(tile, CLS, CLS)``."""
        out = []
        for _ in range(sum(images_per_example)):
            tiles = []
            for t in range(1, self.max_tiles + 1):
                cls = torch.tensor([[t, CLS, CLS]])
                tiles += [cls, grid_coords(self.side, self.side, tile=t)]
            out.append(torch.cat(tiles))
        return out

    def placeholder_text(
        self, image_text: Any, processed: Mapping[str, Tensor], index: int, n_tokens: int
    ) -> tuple[str, list[int]]:
        """The ``<|image|>`` token, once: the image is not in the sequence."""
        return image_text.expansion, [1]

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """The image side of every image, ``[max_tiles * (1 + side**2), d_model]`` each."""
        side = self.image_side(inp)
        per_image = side.view(len(inp), -1, self.max_tiles * self.per_tile, side.shape[-1])
        return [per_image[i, j] for i, n in enumerate(inp.images_per_example) for j in range(n)]

    def image_side(self, inp: Any) -> Float[Tensor, "batch image_pos d_model"]:
        """Each example's images (padded to the batch's most images, as HF pads them) through
        the vision model and the projector, ``max_images * max_tiles * (1 + side**2)`` states."""
        kw = hf_layout(inp)
        p = next(self.parameters())
        out = self.vision_model(pixel_values=kw["pixel_values"].to(p.device, p.dtype),
                                aspect_ratio_ids=kw["aspect_ratio_ids"].to(p.device),
                                aspect_ratio_mask=kw["aspect_ratio_mask"].to(p.device))
        states = self.multi_modal_projector(out.last_hidden_state)
        return states.reshape(len(inp), -1, states.shape[-1])

    def cross_allowed(self, inp: Any) -> Bool[Tensor, "batch pos image_pos"]:
        """Which image-side states each token reads (:func:`cross_attention_tiles`)."""
        allowed = cross_attention_tiles(inp.input_ids.cpu(), inp.image_token_id,
                                        tiles_per_example(inp), self.max_tiles)
        b, s = allowed.shape[:2]
        return allowed.repeat_interleave(self.per_tile, dim=-1).view(b, s, -1)


def mllama_decoder(hf_model: nn.Module) -> DecoderSpec:
    """A Llama decoder with the config's gated cross-attention layers."""
    layers = hf_model.config.text_config.cross_attention_layers
    return DecoderSpec(cross_attention=CrossAttentionSpec(tuple(layers)))


def mllama_image_text(config: Any, tokenizer: Any) -> ImageText:
    """``<|image|>`` once per image; the processor writes BOS after leading images."""
    token = token_name(tokenizer, config.image_token_id)
    return ImageText(token, token, token, bos_in_text=True)


def mllama_hf_inputs(inp: Any, kw: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF's image keywords: per-example pixel values and aspect ratios (:func:`hf_layout`) and
    the ``cross_attention_mask`` ``[batch, pos, max_images, max_tiles]``."""
    if not inp.has_images:
        return kw
    kw.update(hf_layout(inp))
    mask = cross_attention_tiles(inp.input_ids.cpu(), inp.image_token_id, tiles_per_example(inp),
                                 inp.pixel_values.shape[1])  # fmt: skip
    kw["cross_attention_mask"] = mask.long().to(inp.input_ids.device)
    return kw


BY_MODEL_TYPE = {
    "mllama": Family(
        "Llama 3.2 Vision", "MllamaForConditionalGeneration", ("mllama_text_model",),
        ("meta-llama/Llama-3.2-11B-Vision", "meta-llama/Llama-3.2-11B-Vision-Instruct",
         "meta-llama/Llama-3.2-90B-Vision"),
        vision=MllamaVision, decoder_spec=mllama_decoder, image_text=mllama_image_text,
        hf_extra=mllama_hf_inputs, tiny_kinds=("mllama",),
    ),
}  # fmt: skip
