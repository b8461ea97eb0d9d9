"""Attention of chosen heads from the final token, laid out on the image's patch grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lvlm_lens.data import patch_grid_mask
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.viz.figures import ExampleView


def patch_attention(
    model: Any, inp: LVLMInput, heads: list[tuple[int, int]]
) -> dict[str, np.ndarray]:
    """Attention from the final token to the image patches of some heads, on the token grid of
    the first image's whole-image tile (LLaVA-NeXT's base image, InternVL's thumbnail; its
    shape read off ``inp.image_coords``)."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads]
    with torch.no_grad():
        _, cache = model.run_with_cache(inp, names_filter=names, return_cache_object=False)
    coords = inp.image_coords[0]
    tile = model.vision.overview_tile(coords)
    keep = (coords[:, 0] == tile) & (coords[:, 1] >= 0)  # no newline / CLS token
    pos = inp.positions("image")[keep]
    rows, cols = int(coords[keep, 1].max()) + 1, int(coords[keep, 2].max()) + 1
    out = {}
    for layer, head in heads:
        row = cache[f"blocks.{layer}.attn.hook_pattern"][0, head, -1, pos].float().cpu()
        grid = torch.zeros(rows, cols)
        grid[coords[keep, 1], coords[keep, 2]] = row
        out[f"L{layer}H{head}"] = grid.numpy()
    return out


def example_views(
    model: Any,
    records: list[Any],
    infos: list[dict],
    kept: list[int],
    heads: list[tuple[int, int]],
    n: int = 4,
) -> list[ExampleView]:
    """A few examples with the top heads' attention over their patches."""
    views = []
    for i in kept[:n]:
        rec = records[i]
        inp = model.prepare(rec.image, rec.prompt)
        image = rec.load_image()
        size = getattr(model.vision.config.vision_config, "image_size", None)
        if isinstance(size, list | tuple):
            size = size[0]
        if size is not None:  # a fixed-size tower; native-resolution ones keep the aspect
            image = image.resize((size, size))
        obj = None
        if rec.mask is not None and model.cfg.lvlm_type == "llava":
            obj = patch_grid_mask(np.asarray(rec.mask), model.vision.tile_grid).numpy()
        views.append(
            ExampleView(
                image,
                str(rec.answer),
                infos[i]["prediction"],
                patch_attention(model, inp, heads),
                obj,
            )
        )
    return views
