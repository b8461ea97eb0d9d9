"""Llama 4 (``Llama4ForConditionalGeneration``: Scout, Maverick): a Llama 4 vision model over
square tiles plus a global tile, pixel shuffle and its adapter MLP, a linear projector, and a
decoder with interleaved dense / sparse MLPs (sigmoid top-k routing that scales the expert's
input, an ungated shared expert), chunked local attention on its RoPE layers, NoPE layers with
attention-temperature tuning, complex (pairwise) RoPE and q/k L2 norms after RoPE.

HF's ``Llama4ImageProcessor`` needs torchvision, so :class:`Llama4ImageProcessor` here
reimplements its tiling (best-fit canvas of up to ``max_patches`` tiles, resize without
distortion, pad, split row-major, a global tile where there are several) with PIL / numpy; its
pixels are float32 (HF normalises in bfloat16). Tiny checkpoint:
``lvlm_lens/testing/tiny_llama4.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor, nn

from lvlm_lens.model.config import DecoderSpec, MoESpec
from lvlm_lens.model.families.base import Family, ImageText
from lvlm_lens.model.vision import TiledVision

#: The processor's strings: image start / end, the tile separators and the global-tile marker.
IMAGE_START, IMAGE_END = "<|image_start|>", "<|image_end|>"
TILE_X, TILE_Y, GLOBAL = "<|tile_x_separator|>", "<|tile_y_separator|>", "<|image|>"
#: The file the image processor's settings are saved in (HF's name and fields).
PROCESSOR_FILE = "preprocessor_config.json"


def supported_resolutions(max_tiles: int, tile: int) -> list[tuple[int, int]]:
    """Every canvas ``(height, width)`` of at most ``max_tiles`` tiles, in HF's order (grouped
    by aspect ratio, the ratios in order of first appearance from ``max_tiles`` tiles down)."""
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for n in range(max_tiles, 0, -1):
        for h in sorted(d for d in range(1, n + 1) if n % d == 0):
            by_ratio.setdefault(h / (n // h), []).append((h, n // h))
    return [(h * tile, w * tile) for group in by_ratio.values() for h, w in group]


def best_fit(size: tuple[int, int], resolutions: list[tuple[int, int]],
             max_canvas: bool = False) -> tuple[int, int]:  # fmt: skip
    """The canvas an image of ``size`` is fitted to: the smallest upscale (largest with
    ``max_canvas``), else the least downscale; among equal scales the smallest area."""
    res = np.array(resolutions, dtype=np.float32)
    scales = np.minimum(res[:, 0] / np.float32(size[0]), res[:, 1] / np.float32(size[1]))
    up = scales[scales >= 1]
    chosen = (up.max() if max_canvas else up.min()) if len(up) else scales[scales < 1].max()
    options = [r for r, sc in zip(resolutions, scales, strict=True) if sc == chosen]
    return min(options, key=lambda r: r[0] * r[1])


def fit_without_distortion(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The largest ``(height, width)`` of ``size``'s aspect ratio inside ``target``."""
    (h, w), (th, tw) = size, target
    if tw / w < th / h:
        return min(int(np.floor(h * (tw / w))), th), tw
    return th, min(int(np.floor(w * (th / h))), tw)


class Llama4ImageProcessor:
    """Llama 4's image tiling with PIL: ``pixel_values`` ``[tiles, 3, tile, tile]`` (each image's
    tiles row-major, then its global tile where it has several) and ``aspect_ratios`` ``[image,
    2]`` (its rows and columns of tiles).

    Args:
        size: ``{"height": tile, "width": tile}`` (square).
        max_patches: Most tiles per image.
        resize_to_max_canvas: Fit to the largest canvas instead of the least resize.
        image_mean: Per-channel mean after rescaling to ``[0, 1]``.
        image_std: Per-channel standard deviation.
    """

    def __init__(self, size: dict | None = None, max_patches: int = 16,
                 resize_to_max_canvas: bool = False, image_mean: Any = (0.5,) * 3,
                 image_std: Any = (0.5,) * 3, **_: Any):  # fmt: skip
        self.size = dict(size or {"height": 336, "width": 336})
        if self.size["height"] != self.size["width"]:
            raise ValueError(f"Llama 4 image processor size must be square, got {self.size}")
        self.tile = int(self.size["height"])
        self.max_patches = int(max_patches)
        self.resize_to_max_canvas = bool(resize_to_max_canvas)
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    def _normalize(self, image: Image.Image) -> np.ndarray:
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        mean, std = np.array(self.image_mean, np.float32), np.array(self.image_std, np.float32)
        return ((arr - mean) / std).transpose(2, 0, 1)

    def tiles(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        """One image's tiles ``[n, 3, tile, tile]`` and its ``(rows, cols)`` of tiles."""
        t, size = self.tile, (image.height, image.width)
        canvas = best_fit(size, supported_resolutions(self.max_patches, t),
                          self.resize_to_max_canvas)  # fmt: skip
        target = canvas
        if not self.resize_to_max_canvas:  # never upscale past one tile
            target = (min(max(size[0], t), canvas[0]), min(max(size[1], t), canvas[1]))
        h, w = (max(v, 1) for v in fit_without_distortion(size, target))
        padded = Image.new("RGB", (canvas[1], canvas[0]))  # zeros right and below, as HF
        padded.paste(image.convert("RGB").resize((w, h), Image.BILINEAR), (0, 0))
        pixels = self._normalize(padded)
        rows, cols = canvas[0] // t, canvas[1] // t
        out = [pixels[:, r * t : (r + 1) * t, c * t : (c + 1) * t]
               for r in range(rows) for c in range(cols)]  # fmt: skip
        if rows * cols > 1:
            out.append(self._normalize(image.convert("RGB").resize((t, t), Image.BILINEAR)))
        return np.stack(out), (rows, cols)

    def __call__(self, images: list[Image.Image], return_tensors: str = "pt",
                 **_: Any) -> dict[str, Tensor]:  # fmt: skip
        """``pixel_values`` and ``aspect_ratios`` of a flat list of images."""
        per = [self.tiles(im) for im in images]
        return {"pixel_values": torch.from_numpy(np.concatenate([p for p, _ in per])),
                "aspect_ratios": torch.tensor([g for _, g in per])}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """HF's preprocessor-config fields."""
        return {"image_processor_type": "Llama4ImageProcessor", "size": self.size,
                "max_patches": self.max_patches, "resize_to_max_canvas": self.resize_to_max_canvas,
                "image_mean": self.image_mean, "image_std": self.image_std,
                "resample": 2, "do_resize": True, "do_rescale": True, "do_normalize": True,
                "rescale_factor": 1 / 255, "do_convert_rgb": True}  # fmt: skip

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``preprocessor_config.json`` (HF's fields)."""
        (Path(folder) / PROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, **_: Any) -> Llama4ImageProcessor:
        """Read a checkpoint folder's ``preprocessor_config.json`` (or ``processor_config.json``'s
        ``image_processor`` entry)."""
        path = Path(folder)
        if (path / PROCESSOR_FILE).is_file():
            fields = json.loads((path / PROCESSOR_FILE).read_text())
        else:
            fields = json.loads((path / "processor_config.json").read_text())["image_processor"]
        if not fields.get("do_resize", True):
            raise ValueError("Llama 4 image processor with do_resize=False is not supported: "
                             "it always resizes to a canvas of tiles")
        return cls(**fields)


def llama4_image_string(aspect_ratio: tuple[int, int], n_tokens: int, patch: str) -> str:
    """One image's text (HF ``Llama4Processor``'s layout): ``<|image_start|>``, for a tiled image
    each tile's ``n_tokens`` patch tokens with ``<|tile_x_separator|>`` between the tiles of a
    row and ``<|tile_y_separator|>`` after each row, then ``<|image|>``, the global tile's patch
    tokens and ``<|image_end|>``."""
    rows, cols = aspect_ratio
    text = IMAGE_START
    if rows * cols > 1:
        row = TILE_X.join([patch * n_tokens] * cols)
        text += (row + TILE_Y) * rows
    return text + GLOBAL + patch * n_tokens + IMAGE_END


class Llama4Vision(TiledVision):
    """The Llama 4 vision model (its last layer's patches without the CLS token, pixel shuffle
    and adapter MLP) and the linear projector, HF's ``get_image_features``; each tile gives a
    ``side x side`` grid of tokens, the tiles of an image row-major and its global tile last."""

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        self.vision_model = hf_model.vision_model
        self.multi_modal_projector = hf_model.multi_modal_projector
        vc = hf_model.config.vision_config
        self.side = int(vc.image_size // vc.patch_size * vc.pixel_shuffle_ratio)

    def preprocess(self, image_processor: Any, images: list[Any]) -> dict[str, Tensor]:
        """Every tile of every image as a row of ``pixel_values`` (in the tower's dtype: HF's
        vision model does not cast them), tiles per image in ``num_patches``, each image's
        ``(rows, cols)`` of tiles in ``tile_grid``."""
        out = image_processor(images, return_tensors="pt")
        dtype = next(self.vision_model.parameters()).dtype
        grid = torch.as_tensor(out["aspect_ratios"]).reshape(-1, 2)
        n = grid.prod(-1)
        return {"pixel_values": out["pixel_values"].to(dtype), "tile_grid": grid,
                "num_patches": torch.where(n > 1, n + 1, n)}  # fmt: skip

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """One ``[n_tiles * side**2, d_model]`` tensor per image."""
        feats = self._inner.get_image_features(self.pixels(inp), return_dict=True).pooler_output
        feats = feats.reshape(-1, feats.shape[-1])
        return list(feats.split((inp.image_tiles * self.side**2).tolist()))

    def placeholder_text(
        self, image_text: Any, processed: Mapping[str, Tensor], index: int, n_tokens: int
    ) -> tuple[str, list[int]]:
        """:func:`llama4_image_string` with the patch token once per tile."""
        rows, cols = processed["tile_grid"][index].tolist()
        tiles = rows * cols + 1 if rows * cols > 1 else 1
        return llama4_image_string((rows, cols), 1, image_text.expansion), [self.side**2] * tiles


def llama4_decoder(hf_model: nn.Module) -> DecoderSpec:
    """The MoE layers, NoPE layers, chunked layers, q/k norms and temperature of the config."""
    tc = hf_model.config.text_config
    moe = MoESpec(n_experts=tc.num_local_experts, top_k=tc.num_experts_per_tok,
                  d_expert=tc.intermediate_size, layers=tuple(tc.moe_layers), renormalize=False,
                  shared_expert=True, scoring="sigmoid", weight_input=True, shared_gated=False,
                  experts_transposed=True)  # fmt: skip
    chunked = tuple(i for i, t in enumerate(tc.layer_types) if t == "chunked_attention")
    return DecoderSpec(
        moe=moe if tc.moe_layers else None, rope_pairs=True,
        no_rope_layers=tuple(i for i, r in enumerate(tc.no_rope_layers) if not r),
        qk_l2_norm=bool(tc.use_qk_norm),
        attn_temperature=(tc.floor_scale, tc.attn_scale) if tc.attn_temperature_tuning else None,
        attention_chunk=tc.attention_chunk_size if chunked else None, chunked_layers=chunked,
    )  # fmt: skip


def llama4_image_text(config: Any, tokenizer: Any) -> ImageText:
    """``<|image|>`` in prompts; the image token (``<|patch|>``) is the expansion's token."""
    patch = tokenizer.convert_ids_to_tokens(int(config.image_token_id))
    return ImageText(GLOBAL, GLOBAL, patch, closers=(IMAGE_END,))


BY_MODEL_TYPE = {
    "llama4": Family(
        "Llama 4", "Llama4ForConditionalGeneration", ("llama4_text",),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct",
         "meta-llama/Llama-4-Maverick-17B-128E-Instruct"),
        vision=Llama4Vision, decoder_spec=llama4_decoder, image_text=llama4_image_text,
        tiny_kinds=("llama4",), load_image_processor=Llama4ImageProcessor.from_pretrained,
    ),
}  # fmt: skip
