"""The fused branch of the one attention: no ``[batch, head, q, k]`` scores or pattern kept.

:class:`~lvlm_lens.model.attention.Attention` takes this branch when no hook reads
``hook_attn_scores`` / ``hook_pattern`` (a plain forward, a KV cache, ``generate``, the head
ablation engine), and for ``z`` where hooks there only read them (caching). It computes
exactly what the materialised branch computes, with ``scaled_dot_product_attention`` kernels
instead of full score tensors:

- One segment (a plain forward): ``F.scaled_dot_product_attention`` on it.
- Several segments (a cached prefix + the new tokens): each segment is attended on its own,
  giving its output and the log-sum-exp of its scores, and the parts are merged
  (``o = sum_i exp(lse_i - lse) o_i``), so a prefix shared by ``r`` suffixes is read in place
  (a stride-0 view, or the suffixes folded into its rows), never copied per suffix.
- Alternative keys/values of a segment (head ablation): the selected (row, query head) pairs
  are attended again on their gathered rows against the alternative and scattered back, or,
  with many pairs selected, every pair is attended both ways and selected.
- A query with no allowed key (every mask entry the dtype minimum) attends uniformly over every
  key of every segment in the materialised branch; here each segment's uniform mean is weighted
  by its number of keys, which is the same.

The per-segment log-sum-exp comes from PyTorch's flash kernels (CPU:
``_scaled_dot_product_flash_attention_for_cpu``; CUDA: ``_scaled_dot_product_efficient_attention``)
and from explicit scores on other devices. The log-sum-exp has no gradient, so a multi-segment
call that needs gradients takes the materialised branch (see ``Attention``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

Lse = Float[Tensor, "batch head q"]
Out = Float[Tensor, "batch head q d_head"]
_EMPTY = -1e30  # below this a segment's log-sum-exp means "no allowed key" (dtype minimum)


def fused_attention(
    q: Float[Tensor, "batch head q d_head"],
    segments: list[Any],
    mask: Float[Tensor, "batch head_or_1 q k_pos"],
    scale: float,
) -> Float[Tensor, "batch head q d_head"]:
    """Attention of ``q`` over the segments (see the module docstring); returns ``z``.

    Args:
        q: Post-RoPE queries.
        segments: :class:`~lvlm_lens.model.attention.Segment` s in key order; each of batch
            ``batch / r``.
        mask: Additive mask over the segments' keys, concatenated (0 keeps, dtype min blocks).
        scale: Factor of ``q @ k^T``.
    """
    if len(segments) == 1:
        return _segment(q, segments[0], mask, scale, need_lse=False)[0]
    parts, start, lengths = [], 0, []
    for seg in segments:
        if seg.length == 0:  # an empty cache: nothing to attend to
            continue
        m = mask[..., start : start + seg.length]
        if seg.mask_rows_alike:  # one mask row per cached row, broadcast over its queries
            m = m[:: q.shape[0] // seg.k.shape[0], :, :1]
        parts.append(_segment(q, seg, m, scale, True))
        lengths.append(seg.length)
        start += seg.length
    return merge(parts, lengths)


def merge(parts: list[tuple[Out, Lse]], lengths: list[int]) -> Out:
    """Combine per-segment outputs by their log-sum-exp (softmax over all keys at once)."""
    top = torch.stack([p[1] for p in parts]).max(0).values
    empty = top <= _EMPTY  # no allowed key: uniform over all keys, each segment by its size
    out = total = None
    for (o, lse), n in zip(parts, lengths, strict=True):
        w = torch.where(empty, float(n), torch.exp(lse - top))
        part = w[..., None] * o.float()
        out, total = (part, w) if out is None else (out + part, total + w)
    return (out / total[..., None]).to(parts[0][0].dtype)


def _segment(q: Tensor, seg: Any, mask: Tensor, scale: float, need_lse: bool):
    """``(output, lse)`` of one segment, with its alternative for the selected pairs."""
    o, lse = attend(q, seg.k, seg.v, mask, scale, need_lse)
    if seg.select is None:
        return o, lse
    if seg.index is None or seg.queries is not None:  # all pairs both ways, then select
        oa, la = attend(q, seg.k_alt, seg.v_alt, mask, scale, need_lse)
        pick = seg.select[:, :, None]
        if seg.queries is not None:  # only these queries read the alternative
            pick = pick & seg.queries.expand(q.shape[0], -1)[:, None, :]
        o = torch.where(pick[..., None], oa, o)
        return o, (torch.where(pick, la, lse) if need_lse else None)
    b, h = seg.index
    if b.numel() == 0:  # a shape, known on the host: no synchronisation
        return o, lse
    r, g = q.shape[0] // seg.k_alt.shape[0], q.shape[1] // seg.k_alt.shape[1]
    kb, kh = b // r, h // g
    if seg.k_alt.shape[0] == 1:  # one cached row (the engine): a fast copy of whole heads
        k_alt, v_alt = seg.k_alt[0].index_select(0, kh), seg.v_alt[0].index_select(0, kh)
    else:
        k_alt, v_alt = seg.k_alt[kb, kh], seg.v_alt[kb, kh]
    rows = kb if mask.shape[0] != q.shape[0] else b  # a mask per cached row, or per query row
    m = mask[rows, h if mask.shape[1] > 1 else 0][:, None]
    oa, la = attend(q[b, h][:, None], k_alt[:, None], v_alt[:, None], m, scale, need_lse)
    o[b, h] = oa[:, 0].to(o.dtype)
    if need_lse:
        lse[b, h] = la[:, 0]
    return o, lse


def attend(
    q: Float[Tensor, "batch head q d_head"],
    k: Float[Tensor, "batch_kv kv_head k d_head"],
    v: Float[Tensor, "batch_kv kv_head k d_head"],
    mask: Float[Tensor, "batch head_or_1 q k"],
    scale: float,
    need_lse: bool,
) -> tuple[Out, Lse | None]:
    """``softmax(q k^T scale + mask) v`` (and the log-sum-exp of each row when asked).

    ``k``/``v`` may have ``1/r`` of the queries' batch (rows grouped example-major) and
    ``1/g`` of their heads (grouped-query attention).
    """
    bq, bk = q.shape[0], k.shape[0]
    if bk != bq and (bk > 1 or mask.shape[0] == 1):  # fold the r rows of a cached row into
        r, s = bq // bk, q.shape[2]  # its query rows; a per-query-row mask is folded likewise
        m = _fold(mask, r) if mask.shape[0] == bq else mask
        o, lse = attend(_fold(q, r), k, v, m, scale, need_lse)
        return _unfold(o, r, s), (None if lse is None else _unfold(lse, r, s))
    if bk != bq:  # one cached row, a mask per query row: read K/V as a stride-0 batch
        k, v = k.expand(bq, -1, -1, -1), v.expand(bq, -1, -1, -1)
    mask = mask.to(q.dtype)
    if not need_lse:
        gqa = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa
        ), None
    return lse_kernel(q.device.type)(q, k, v, mask, scale)


def lse_kernel(device_type: str) -> Callable[..., tuple[Out, Lse]]:
    """The kernel returning ``(output, log-sum-exp)`` on a device type."""
    return {"cpu": _cpu_lse, "cuda": _cuda_lse}.get(device_type, explicit_lse)


def _cpu_lse(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float):
    # grouped-query heads, stride-0 batches and broadcast masks are read in place
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    o, lse = op(q, k, v, attn_mask=mask, scale=scale)
    return o, lse


def _cuda_lse(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, kernel=None):
    """Memory-efficient CUDA kernel: equal head counts, a 16-aligned bias, lse padded to 32."""
    kernel = kernel or torch.ops.aten._scaled_dot_product_efficient_attention
    b, h, s, _ = q.shape
    g = h // k.shape[1]
    if g > 1:  # query heads of one K/V head become rows of one K/V head
        q = q.reshape(b, k.shape[1], g * s, q.shape[-1])
        mask = (mask.view(b, k.shape[1], g * s, -1) if mask.shape[1] == h
                else mask[:, :, None].expand(-1, -1, g, -1, -1).reshape(b, 1, g * s, -1))
    n = mask.shape[-1]
    bias = F.pad(mask, (0, -n % 16))[..., :n] if n % 16 else mask
    bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], n)
    o, lse = kernel(q, k, v, bias, True, scale=scale)[:2]
    return o.reshape(b, h, s, -1), lse[..., : q.shape[2]].reshape(b, h, s)


def explicit_lse(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float):
    """Any device: explicit scores (what the materialised branch computes), with the lse."""
    g = q.shape[1] // k.shape[1]
    if g > 1:
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale + mask
    p = F.softmax(scores, dim=-1, dtype=torch.float32)
    return p.to(q.dtype) @ v, torch.logsumexp(scores.float(), dim=-1)


def _fold(x: Tensor, r: int) -> Tensor:
    """``[B, H, s, ...] -> [B/r, H, r*s, ...]``: the ``r`` rows of one cached row as queries."""
    b, h, s, *rest = x.shape
    return x.reshape(b // r, r, h, s, *rest).transpose(1, 2).reshape(b // r, h, r * s, *rest)


def _unfold(x: Tensor, r: int, s: int) -> Tensor:
    """Inverse of :func:`_fold`."""
    b, h, _, *rest = x.shape
    return x.reshape(b, h, r, s, *rest).transpose(1, 2).reshape(b * r, h, s, *rest)
