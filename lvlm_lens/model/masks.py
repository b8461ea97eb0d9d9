"""Attention masks (causal, padding, sliding window): which keys each query may see."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def allowed_keys(
    key_mask: Int[Tensor, "batch k_pos"], n_queries: int, window: int | None = None
) -> Bool[Tensor, "batch pos k_pos"]:
    """Keys each query may attend to (causal, not padding, within the sliding window).

    The ``n_queries`` queries are the last ``n_queries`` keys (a KV cache holds the others).
    """
    n_keys = key_mask.shape[1]
    q_idx = torch.arange(n_keys - n_queries, n_keys, device=key_mask.device)[:, None]
    k_idx = torch.arange(n_keys, device=key_mask.device)[None, :]
    allowed = (k_idx <= q_idx)[None] & key_mask.bool()[:, None, :]
    if window is not None:
        allowed = allowed & (k_idx > q_idx - window)[None]
    return allowed


def causal_mask(
    key_mask: Int[Tensor, "batch k_pos"],
    n_queries: int,
    dtype: torch.dtype,
    window: int | None = None,
) -> Float[Tensor, "batch 1 pos k_pos"]:
    """Additive form of :func:`allowed_keys`: 0 where allowed, the dtype minimum elsewhere."""
    allowed = allowed_keys(key_mask, n_queries, window)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
