"""Attention of chosen heads from the final token, laid out on the image's patch grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lvlm_lens.data import Record, patch_grid_mask
from lvlm_lens.model.families import FAMILIES
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.viz.figures import ExampleView
from lvlm_lens.viz.patches import head_attention, image_grids


def patch_attention(
    model: HookedLVLM, inp: LVLMInput, heads: list[tuple[int, int]]
) -> dict[str, np.ndarray]:
    """Attention from the final token to the (base-tile) image patches of some heads."""
    grid = image_grids(inp, 0)[0]
    att = head_attention(model, inp, heads, "final", 0)
    return {f"L{layer}H{head}": np.nan_to_num(grid.fill(a)).astype(np.float32)
            for (layer, head), a in att.items()}


def load_view_image(path: Path) -> Image.Image:
    """One saved example view's image, decoded in full.

    Raises:
        ValueError: The file is missing or damaged; the message names it and what to rerun.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as err:  # missing, not a PNG, truncated
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{path} is damaged ({why}): run the same `lvlm-lens attribute` command again to "
            "rewrite it (its finished chunks are kept)"
        ) from err


def example_views(
    model: HookedLVLM,
    records: Sequence[Record],
    predictions: Sequence[str],
    heads: list[tuple[int, int]],
) -> list[ExampleView]:
    """Examples (records and the model's predicted answers) with the top heads' attention over
    their patches (none where the image is read by cross-attention layers, Llama 3.2 Vision:
    its image side is not in the sequence, so there is no patch grid of sequence positions to
    draw yet)."""
    if len(predictions) != len(records):
        raise ValueError(f"got {len(predictions)} predictions for {len(records)} records")
    in_sequence = model.cfg.decoder.cross_attention is None
    views = []
    for rec, prediction in zip(records, predictions, strict=True):
        inp = model.prepare(rec.image, rec.prompt)
        image = rec.load_image()
        size = getattr(model.vision.config.vision_config, "image_size", None)
        if isinstance(size, list | tuple):
            size = size[0]
        if size is not None:  # a fixed-size tower; native-resolution ones keep the aspect
            image = image.resize((size, size))
        obj = None
        family = FAMILIES.get(model.cfg.lvlm_type)
        if rec.mask is not None and family is not None and family.cropped_grid:
            obj = patch_grid_mask(np.asarray(rec.mask), model.vision.tile_grid).numpy()
        views.append(
            ExampleView(
                image,
                str(rec.answer),
                prediction,
                patch_attention(model, inp, heads) if in_sequence else {},
                obj,
            )
        )
    return views
