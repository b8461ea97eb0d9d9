"""Additive attention masks (causal, padding, sliding window)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def causal_mask(
    key_mask: Int[Tensor, "batch k_pos"],
    n_queries: int,
    dtype: torch.dtype,
    window: int | None = None,
) -> Float[Tensor, "batch 1 pos k_pos"]:
    """Additive causal + padding (+ sliding-window) mask; the new tokens are the last keys."""
    n_keys = key_mask.shape[1]
    q_idx = torch.arange(n_keys - n_queries, n_keys, device=key_mask.device)[:, None]
    k_idx = torch.arange(n_keys, device=key_mask.device)[None, :]
    allowed = (k_idx <= q_idx)[None] & key_mask.bool()[:, None, :]
    if window is not None:
        allowed = allowed & (k_idx > q_idx - window)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
