"""Attention masks (causal, padding, sliding window, bidirectional image blocks and prefixes):
which keys each query may see."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def allowed_keys(
    key_mask: Int[Tensor, "batch k_pos"],
    n_queries: int,
    window: int | None = None,
    blocks: Int[Tensor, "batch pos"] | None = None,
    windowed_blocks: bool = True,
    chunk: int | None = None,
) -> Bool[Tensor, "batch pos k_pos"]:
    """Keys each query may attend to (causal, not padding, within the sliding window).

    The ``n_queries`` queries are the last ``n_queries`` keys (a KV cache holds the others).
    ``blocks`` gives each new token's bidirectional block (Gemma 3: the tokens of one image;
    PaliGemma: the whole image + prompt prefix; ``-1`` elsewhere): tokens of one block also
    see the later tokens of that block, as in HF's ``OR(causal, block)``. With
    ``windowed_blocks`` the window still bounds how far back a query sees, as Gemma 3's
    ``AND(window, OR(causal, block))``; without, a block is seen whole past the window, as HF's
    ``OR(AND(window, causal), block)`` of ``create_sliding_window_causal_mask`` (PaliGemma 2).
    Blocks never span cached keys and new tokens. With ``chunk`` (Llama 4's chunked local
    attention) a query sees only keys of its own chunk: ``pos // chunk`` equal, ``pos`` the
    count of real keys before it (its rotary position; HF's ``chunked_overlay`` after the
    left padding).
    """
    n_keys = key_mask.shape[1]
    q_idx = torch.arange(n_keys - n_queries, n_keys, device=key_mask.device)[:, None]
    k_idx = torch.arange(n_keys, device=key_mask.device)[None, :]
    allowed = (k_idx <= q_idx)[None]
    if window is not None and not windowed_blocks:
        allowed = allowed & (k_idx > q_idx - window)[None]
    if blocks is not None:
        pad = blocks.new_full((blocks.shape[0], n_keys - n_queries), -1)
        keys = torch.cat([pad, blocks], dim=1)
        allowed = allowed | ((blocks[:, :, None] == keys[:, None, :]) & (blocks[:, :, None] >= 0))
    allowed = allowed & key_mask.bool()[:, None, :]
    if window is not None and windowed_blocks:
        allowed = allowed & (k_idx > q_idx - window)[None]
    if chunk is not None:
        ids = (key_mask.long().cumsum(-1) - 1).clamp(min=0) // chunk  # [batch, k_pos]
        allowed = allowed & (ids[:, n_keys - n_queries :, None] == ids[:, None, :])
    return allowed


def causal_mask(
    key_mask: Int[Tensor, "batch k_pos"],
    n_queries: int,
    dtype: torch.dtype,
    window: int | None = None,
    blocks: Int[Tensor, "batch pos"] | None = None,
    windowed_blocks: bool = True,
    chunk: int | None = None,
) -> Float[Tensor, "batch 1 pos k_pos"]:
    """Additive form of :func:`allowed_keys`: 0 where allowed, the dtype minimum elsewhere."""
    allowed = allowed_keys(key_mask, n_queries, window, blocks, windowed_blocks, chunk)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def image_blocks(is_image: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Block id of each run of consecutive image tokens (``-1`` at other tokens), as HF's
    ``get_block_sequence_ids_for_mask``."""
    is_image = is_image.bool()
    prev = torch.nn.functional.pad(is_image, (1, 0), value=False)[:, :-1]
    ids = torch.cumsum((is_image & ~prev).long(), dim=1) - 1
    return torch.where(is_image, ids, torch.full_like(ids, -1))


def prefix_blocks(prefix: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """One bidirectional block per row over the tokens of a prefix-LM prefix (PaliGemma: the
    real tokens of token type 0, image and prompt), ``-1`` elsewhere, as HF's
    ``where(token_type_ids == 0, 0, -1)``; pass ``prefix`` already masked by the padding."""
    return torch.where(prefix.bool(), 0, -1)
