"""Gated cross-attention (Llama 3.2 Vision's cross-attention layers), on the one attention.

The image never enters the residual stream: a cross-attention layer's text queries read keys
and values projected from the *image side*, ``[batch, image_pos, d_model]`` projected vision
states per example (each image's tiles, each tile a CLS token and its patches, in the
processor's order, padded as HF pads them). Scores, pattern and the fused kernels are those of
:class:`~lvlm_lens.model.attention.Attention`: the image side is one key segment.

Hooks of ``blocks.{l}.cross_attn`` (no rotary; ``head`` a query head, ``kv_head`` a key / value
head):

- ``hook_q`` ``[batch, pos, head, d_head]``: after ``q_norm`` (what the scores read).
- ``hook_k`` / ``hook_v`` ``[batch, image_pos, kv_head, d_head]``: the image side's keys (after
  ``k_norm``) and values.
- ``hook_attn_scores`` / ``hook_pattern`` ``[batch, head, pos, image_pos]``.
- ``hook_z`` ``[batch, pos, head, d_head]``; ``hook_result`` with ``use_attn_result``.

A token that may read no image token (before the first image, padding) attends, unmasked, over
the whole image side (padded tiles included), as HF's mask makes it; its MLP output is then
zeroed (``CrossInput.rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lvlm_lens.model.attention import KV, Attention, Segment
from lvlm_lens.model.config import LVLMConfig
from lvlm_lens.model.fused_attention import fused_attention
from lvlm_lens.model.norm import RMSNorm

__all__ = ["CrossAttention", "CrossInput", "cross_input"]


@dataclass
class CrossInput:
    """What the cross-attention layers of a run read.

    Attributes:
        states: The image side: projected vision states per example.
        mask: Additive mask of each query over the image side (0 keeps, the dtype minimum
            blocks); all 0 on a row that may read no image token (HF's).
        rows: 1 where the token may read an image token, 0 elsewhere (scales the MLP output).
        kv: Per cross-attention layer, that layer's image keys / values computed once
            (``[batch_kv, kv_head, image_pos, d_head]``); a layer missing here computes them.
    """

    states: Float[Tensor, "batch_kv image_pos d_model"]
    mask: Float[Tensor, "batch 1 pos image_pos"]
    rows: Float[Tensor, "batch pos"]
    kv: dict[int, KV] | None = None

    def cols(self, cols: slice) -> CrossInput:
        """The cross input of a range of query columns."""
        return CrossInput(self.states, self.mask[:, :, cols], self.rows[:, cols], self.kv)

    def expand(self, batch: int) -> CrossInput:
        """One example's cross input for ``batch`` query rows (the image side read in place)."""
        return CrossInput(self.states, self.mask.expand(batch, -1, -1, -1),
                          self.rows.expand(batch, -1), self.kv)  # fmt: skip

    def last(self, kv: dict[int, KV]) -> CrossInput:
        """What the tokens after these read (a KV cache's continuation): the last column's
        mask and row, which every later token repeats (HF's ``generate``), and the layers'
        image keys / values ``kv``."""
        return CrossInput(self.states, self.mask[:, :, -1:], self.rows[:, -1:], kv)

    def continued(self, rows_per_example: int, pos: int) -> CrossInput:
        """The cross input of ``pos`` new tokens after a cache holding this :meth:`last`, for
        ``rows_per_example`` query rows per cached example (example-major)."""
        r = rows_per_example
        mask = self.mask.repeat_interleave(r, 0).expand(-1, -1, pos, -1)
        return CrossInput(self.states, mask, self.rows.repeat_interleave(r, 0).expand(-1, pos),
                          self.kv)  # fmt: skip

    def to(self, device: torch.device | str) -> CrossInput:
        """Move to ``device``."""
        kv = None if self.kv is None else {
            k: (a.to(device), b.to(device)) for k, (a, b) in self.kv.items()}  # fmt: skip
        return CrossInput(self.states.to(device), self.mask.to(device), self.rows.to(device), kv)


def cross_input(
    states: Float[Tensor, "batch image_pos d_model"],
    allowed: Bool[Tensor, "batch pos image_pos"],
    dtype: torch.dtype,
) -> CrossInput:
    """The :class:`CrossInput` of image-side ``states`` and which image tokens each query may
    read: blocked entries get the dtype minimum, and a row with no allowed entry is all 0."""
    sees = allowed.any(-1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask = mask.masked_fill(~(allowed | ~sees[..., None]), torch.finfo(dtype).min)
    return CrossInput(states, mask[:, None], sees.to(dtype))


class CrossAttention(Attention):
    """Cross-attention of text queries over the image side, on the HF module's own weights
    (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``q_norm``, ``k_norm``); ``W_Q`` ... ``W_O``
    as :class:`Attention`'s (``W_K`` / ``W_V`` read the image side)."""

    def __init__(self, cfg: LVLMConfig, hf_attn: nn.Module):
        nn.Module.__init__(self)
        self.cfg = cfg
        self.q_proj, self.k_proj = hf_attn.q_proj, hf_attn.k_proj
        self.v_proj, self.o_proj = hf_attn.v_proj, hf_attn.o_proj
        self.scaling = float(getattr(hf_attn, "scaling", cfg.d_head**-0.5))
        self.q_norm = RMSNorm(hf_attn.q_norm)
        self.k_norm = RMSNorm(hf_attn.k_norm)
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())

    def image_kv(self, states: Float[Tensor, "batch image_pos d_model"], hooked: bool = True) -> KV:
        """Keys (after ``k_norm``) and values of the image side, ``[batch, kv_head, image_pos,
        d_head]`` (through ``hook_k`` / ``hook_v`` where ``hooked``)."""
        b, n, _ = states.shape
        shape = (b, n, self.cfg.n_key_value_heads, self.cfg.d_head)
        k = self.k_norm(self.k_proj(states).view(shape))
        v = self.v_proj(states).view(shape)
        if hooked:
            k, v = self.hook_k(k), self.hook_v(v)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(  # type: ignore[override]
        self,
        x: Float[Tensor, "batch pos d_model"],
        cross: CrossInput,
        kv: KV | None = None,
        seg: Segment | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], KV]:
        """Attend from ``x`` (normalised residual stream) over the image side.

        Args:
            x: The layer's normalised input.
            cross: The run's image side and mask.
            kv: This layer's image keys / values, if already computed.
            seg: The key segment to read instead (its ``k`` / ``v`` the image side's, with
                alternatives for some heads: head ablation).

        Returns:
            The attention output (before the gate) and the image ``(key, value)`` read.
        """
        cfg = self.cfg
        b, s, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, s, cfg.n_heads, cfg.d_head))
        q = self.hook_q(q).transpose(1, 2)
        if seg is None:
            k, v = kv if kv is not None else self.image_kv(cross.states)
            seg = Segment(k, v)
        segments = [seg]
        if self.fused(q, segments):
            z = fused_attention(q, segments, cross.mask, self.scaling)
        else:
            z = self._materialised(q, segments, cross.mask)
        z = self.hook_z(z.transpose(1, 2))
        if cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bshd,hdm->bshm", z, self.W_O))
            out = result.sum(dim=2) + self.b_O
        else:
            out = self.o_proj(z.reshape(b, s, cfg.n_heads * cfg.d_head))
        return out, (seg.k, seg.v)
