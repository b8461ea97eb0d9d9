"""Rotary position embeddings as the HF families apply them (halves, adjacent pairs,
Llama 4's complex pairs), Llama 4's query temperature and the weightless q/k/v norm."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


def rotate_half(x: Tensor) -> Tensor:
    """Rotate the two halves of the last dimension: ``(a, b) -> (-b, a)``."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_pairs(x: Tensor) -> Tensor:
    """Rotate adjacent pairs of the last dimension: ``(x_2i, x_2i+1) -> (-x_2i+1, x_2i)``."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "batch pos d_head"],
    sin: Float[Tensor, "batch pos d_head"],
    pairs: bool = False,
) -> Float[Tensor, "batch pos head d_head"]:
    """Apply rotary position embeddings to the first ``cos.shape[-1]`` dimensions of each
    head: HF's half-rotation convention, or with ``pairs`` the rotation of adjacent pairs
    (GLM's, whose tables repeat each frequency twice in a row)."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:  # partial rotary (Qwen3.5, GLM): the last dimensions pass unrotated
        return torch.cat((apply_rotary(x[..., :rot], cos, sin, pairs), x[..., rot:]), dim=-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + (rotate_pairs(x) if pairs else rotate_half(x)) * sin


def apply_rotary_pairs(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "batch pos half"],
    sin: Float[Tensor, "batch pos half"],
) -> Float[Tensor, "batch pos head d_head"]:
    """Apply rotary position embeddings to consecutive pairs ``(x[2i], x[2i+1])`` of each head
    (Llama 4's complex convention: each pair times ``cos + i sin``), computed in fp32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, :, None], sin[:, :, None]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).type_as(x)


def rotary_tables(out: Tensor | tuple[Tensor, Tensor], pairs: bool) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` from an HF rotary module's output: its own tuple, or (``pairs``, Llama 4)
    the real and imaginary parts of its complex ``freqs_cis``."""
    return (out.real, out.imag) if pairs else out


def temperature(spec: Any, position_ids: Tensor) -> Float[Tensor, "batch pos 1 1"] | None:
    """Llama 4's query scale on the layers without RoPE (``spec.attn_temperature``), from the
    rotary positions ``[batch, pos]``; ``None`` where the decoder has none."""
    if spec.attn_temperature is None or not spec.no_rope_layers:
        return None
    floor_scale, attn_scale = spec.attn_temperature
    pos = position_ids.float()
    scale = torch.log1p(torch.floor((pos + 1.0) / floor_scale)) * attn_scale + 1.0
    return scale[..., None, None]


def l2_norm(x: Tensor, eps: float) -> Tensor:
    """Weightless RMSNorm over the last dimension, in fp32 (Llama 4's q/k norm, Gemma 4's
    v norm)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)
