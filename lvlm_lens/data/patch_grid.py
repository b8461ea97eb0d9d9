"""Object masks in pixels -> object / background image tokens on the vision tower's patch grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def patch_grid_mask(
    mask: Any,
    grid: int | tuple[int, int],
    *,
    threshold: float = 0.25,
    center_crop: bool = False,
) -> torch.Tensor:
    """Project a pixel mask onto the vision tower's patch grid.

    A patch is an *object* patch when at least ``threshold`` (default 25 %) of its pixels are
    object pixels; sides that the grid does not divide are pooled adaptively
    (``adaptive_avg_pool2d``). Use this on masks in the image frame the tower sees.

    Args:
        mask: ``[H, W]`` bool array / tensor (True at object pixels).
        grid: Patches per side (``image_size // patch_size``, 6 for the toy), or ``(rows, cols)``.
        threshold: Object fraction at or above which a patch counts as object.
        center_crop: First crop the mask to its central square, as a CLIP processor's
            shortest-edge resize + center crop does to a non-square image.

    Returns:
        ``[rows, cols]`` bool tensor, row-major like the image tokens.
    """
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {tuple(m.shape)}")
    if center_crop:
        h, w = m.shape
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        m = m[top : top + s, left : left + s]
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    frac = torch.nn.functional.adaptive_avg_pool2d(m[None, None], (rows, cols))[0, 0]
    return frac >= threshold - 1e-6
