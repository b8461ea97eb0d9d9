"""The one attention implementation: plain, KV-cached and shared-prefix runs alike.

Keys and values of earlier tokens (a KV cache) may come with a smaller batch than the
queries: ``B_q = B_kv * r``, query rows grouped example-major. The ``r`` queries of each
cached example and the ``n_heads / n_key_value_heads`` query heads of each key/value head
are folded into the rows of one matmul, so a prefix shared by many suffixes is never copied
per suffix and grouped-query keys are never repeated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lvlm_lens.model.config import LVLMConfig
from lvlm_lens.model.fused_attention import fused_attention
from lvlm_lens.model.norm import RMSNorm, through_hook
from lvlm_lens.model.rotary import (
    apply_rotary,
    apply_rotary_pairs,
    l2_norm,
    rotary_tables,
    rotate_half,
    rotate_pairs,
    temperature,
)
from lvlm_lens.model.weights import AttentionWeights

__all__ = ["KV", "Attention", "Segment", "SelfAlternative", "apply_rotary", "apply_rotary_pairs",
           "l2_norm", "rotary_tables", "rotate_half", "rotate_pairs", "temperature"]

KV = tuple[
    Float[Tensor, "batch_kv kv_head pos d_head"], Float[Tensor, "batch_kv kv_head pos d_head"]
]


@dataclass
class Segment:
    """Keys/values the queries attend to, optionally with an alternative per query head.

    Where ``select[row, head]`` is set, that query head of that query row reads ``k_alt`` /
    ``v_alt`` instead of ``k`` / ``v`` (both scores and values of the segment are computed both
    ways and selected). This is how head ablation replaces a head's source keys/values.
    When ``index`` lists the selected pairs (few of them), only those pairs are computed the
    alternative way, gathered and scattered back, with no host-device synchronisation.
    """

    k: Float[Tensor, "batch_kv kv_head pos d_head"]
    v: Float[Tensor, "batch_kv kv_head pos d_head"]
    k_alt: Float[Tensor, "batch_kv kv_head pos d_head"] | None = None
    v_alt: Float[Tensor, "batch_kv kv_head pos d_head"] | None = None
    select: Bool[Tensor, "batch head"] | None = None
    index: tuple[Tensor, Tensor] | None = None  # (rows, heads) of ``select``: sparse path
    mask_rows_alike: bool = False  # the mask over these keys is the same for every query of
    # one cached row (a prefix without a sliding window): the fused path reads one mask row
    queries: Bool[Tensor, "batch_or_1 q"] | None = None  # only these read it (dense path)

    @property
    def length(self) -> int:
        return self.k.shape[2]


@dataclass
class SelfAlternative:
    """Alternative keys/values for the new tokens' own positions ``src`` (see :class:`Segment`)."""

    k: Float[Tensor, "batch_or_1 kv_head pos d_head"]
    v: Float[Tensor, "batch_or_1 kv_head pos d_head"]
    src: Bool[Tensor, "batch_or_1 pos"]
    select: Bool[Tensor, "batch head"]
    queries: Bool[Tensor, "batch_or_1 pos"] | None = None  # who may read them (default: all)


def _watched(*points: nn.Module) -> bool:
    """Whether any hook (TransformerLens' or a plain torch one, global ones included) is
    registered on these hook points."""
    mod = torch.nn.modules.module
    if mod._global_forward_hooks or mod._global_forward_pre_hooks or mod._global_backward_hooks:
        return True
    return any(
        p._forward_hooks or p._forward_pre_hooks or p._backward_hooks or p._backward_pre_hooks
        for p in points
    )


def fold_rows(x: Tensor, batch_kv: int, n_kv: int) -> Tensor:
    """``[B_q, H, s, n] -> [B_kv, H_kv, r*g*s, n]``: query rows grouped by the K/V they read."""
    b, h, s, n = x.shape
    r, g = b // batch_kv, h // n_kv
    if r == 1:
        return x.reshape(batch_kv, n_kv, g * s, n)
    return x.view(batch_kv, r, n_kv, g, s, n).transpose(1, 2).reshape(batch_kv, n_kv, r * g * s, n)


def unfold_rows(x: Tensor, batch_q: int, n_heads: int, s: int) -> Tensor:
    """Inverse of :func:`fold_rows`: ``[B_kv, H_kv, r*g*s, n] -> [B_q, H, s, n]``."""
    b, h_kv, _, n = x.shape
    r, g = batch_q // b, n_heads // h_kv
    if r == 1:
        return x.view(batch_q, n_heads, s, n)
    return x.view(b, h_kv, r, g, s, n).transpose(1, 2).reshape(batch_q, n_heads, s, n)


def segment_scores(q: Float[Tensor, "batch head q d_head"], k: Tensor) -> Tensor:
    """Raw ``q @ k^T`` of queries against one K segment of batch ``B_q / r``."""
    b, h, s, _ = q.shape
    return unfold_rows(fold_rows(q, k.shape[0], k.shape[1]) @ k.transpose(-1, -2), b, h, s)


def segment_values(pattern: Float[Tensor, "batch head q k"], v: Tensor) -> Tensor:
    """``pattern @ v`` for one V segment of batch ``B_q / r``."""
    b, h, s, _ = pattern.shape
    return unfold_rows(fold_rows(pattern, v.shape[0], v.shape[1]) @ v, b, h, s)


def _pairs(seg: Segment, kv: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Selected (row, query head) pairs and the (cache row, K/V head) each one reads."""
    b, h = seg.index
    r = seg.select.shape[0] // kv.shape[0]
    g = seg.select.shape[1] // kv.shape[1]
    return b, h, b // r, h // g


def _dense_cond(seg: Segment, batch: int) -> Tensor:
    """Where the alternative is read: selected (row, head) pairs, at the allowed queries."""
    cond = seg.select[:, :, None, None]
    if seg.queries is not None:
        cond = cond & seg.queries.expand(batch, -1)[:, None, :, None]
    return cond


class Attention(AttentionWeights, nn.Module):
    """Causal self-attention with RoPE, grouped-query heads and TransformerLens hooks.

    Weights stay in the checkpoint's own ``nn.Linear`` modules (shared with the HF model);
    ``W_Q``/``W_K``/``W_V``/``W_O``, biases, ``QK`` and ``OV`` are TransformerLens-shaped
    views of them (:mod:`~lvlm_lens.model.weights`).
    """

    def __init__(self, cfg: LVLMConfig, hf_attn: nn.Module, layer: int = 0):
        super().__init__()
        self.cfg = cfg
        self.rope = layer not in cfg.decoder.no_rope_layers  # Llama 4: NoPE layers
        # Gemma 4: global layers with wider heads (and other K/V head counts)
        self.d_head = cfg.decoder.head_width(layer, cfg.d_head)
        self.n_kv = cfg.decoder.kv_head_count(layer, cfg.n_key_value_heads)
        # Gemma 4: a layer reading an earlier layer's K/V has no K/V weights of its own
        self.shares_kv = cfg.decoder.kv_from(layer) != layer
        self.q_proj, self.o_proj = hf_attn.q_proj, hf_attn.o_proj
        self.layer = layer
        self.k_proj = None if self.shares_kv else hf_attn.k_proj
        # Gemma 4's attention_k_eq_v: values from the key projection (before k_norm)
        self.k_as_v = layer in cfg.decoder.values_from_keys
        self.v_proj = None if self.shares_kv or self.k_as_v else hf_attn.v_proj
        self.scaling = float(getattr(hf_attn, "scaling", cfg.d_head**-0.5))
        if cfg.decoder.qk_norm:  # per-head RMSNorm of queries and keys before RoPE (Gemma 3)
            fp32 = cfg.decoder.norm_fp32
            self.q_norm = RMSNorm(hf_attn.q_norm, cfg.decoder.norm_offset, fp32)
            if not self.shares_kv:
                self.k_norm = RMSNorm(hf_attn.k_norm, cfg.decoder.norm_offset, fp32)
        for name in ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())
        if cfg.decoder.attn_output_gate:
            self.hook_gate = HookPoint()

    @property
    def W_G(self) -> Float[Tensor, "head d_model d_head"]:
        """The output gate's weight per head (``attn_output_gate``: ``q_proj``'s gate rows)."""
        w = self.q_proj.weight.view(self.cfg.n_heads, 2, self.d_head, -1)[:, 1]
        return w.transpose(1, 2)

    @property
    def b_G(self) -> Float[Tensor, "head d_head"]:
        """The output gate's bias per head (zeros where ``q_proj`` has none)."""
        b = self.q_proj.bias
        if b is None:
            return self.q_proj.weight.new_zeros(self.cfg.n_heads, self.d_head)
        return b.view(self.cfg.n_heads, 2, self.d_head)[:, 1]

    def _rotate(self, t: Tensor, cos: Tensor, sin: Tensor, q_scale: Tensor | None = None
                ) -> Tensor:
        """RoPE (and Llama 4's q/k norm after it) on a RoPE layer; on a layer without, the
        query scale (Llama 4's temperature tuning) where ``q_scale`` is given."""
        spec = self.cfg.decoder
        if not self.rope:
            return t if q_scale is None else (t * q_scale).to(t.dtype)
        if spec.rope_pairs:  # Llama 4: complex tables, half-size
            t = apply_rotary_pairs(t, cos, sin)
        else:  # halves, or GLM's adjacent pairs on full-size tables
            t = apply_rotary(t, cos, sin, spec.rotary_pairs)
        return l2_norm(t, self.cfg.eps) if spec.qk_l2_norm else t  # Llama 4: after RoPE

    def _values_of(self, x: Tensor, k: Tensor, tuple_inputs: bool = False) -> Tensor:
        """The value projection of ``x`` (per-head inputs with ``tuple_inputs``); the keys ``k``
        as projected (``hook_k``'s) where the layer takes its values from them."""
        if self.k_as_v:
            return k
        if tuple_inputs:
            return torch.einsum("bshm,hmd->bshd", x, self._W_V) + self._b_V
        return self.v_proj(x)

    def _v_norm(self, v: Tensor) -> Tensor:
        """Values as the attention reads them: with ``v_norm`` (Gemma 4) a weightless RMSNorm
        over ``d_head``, before ``hook_v``."""
        return l2_norm(v, self.cfg.eps) if self.cfg.decoder.v_norm else v

    def _scores(self, q: Tensor, seg: Segment) -> Tensor:
        out = segment_scores(q, seg.k).mul_(self.scaling)  # a fresh tensor: scaled in place
        if seg.select is None:
            return out
        if seg.index is None or seg.queries is not None:
            alt = segment_scores(q, seg.k_alt) * self.scaling
            return torch.where(_dense_cond(seg, out.shape[0]), alt, out)
        b, h, kb, kh = _pairs(seg, seg.k_alt)
        out[b, h] = (q[b, h] @ seg.k_alt[kb, kh].transpose(-1, -2)) * self.scaling
        return out

    def softcap(self, scores: Tensor) -> Tensor:
        """Scaled scores as ``hook_attn_scores`` holds them before the mask: capped to
        ``tanh(s / cap) * cap`` where ``cfg.decoder.attn_softcap`` is set (Gemma 2, as HF)."""
        cap = self.cfg.decoder.attn_softcap
        return scores if cap is None else torch.tanh(scores / cap) * cap

    def _values(self, pattern: Tensor, seg: Segment) -> Tensor:
        out = segment_values(pattern, seg.v)
        if seg.select is None:
            return out
        if seg.index is None or seg.queries is not None:
            alt = segment_values(pattern, seg.v_alt)
            return torch.where(_dense_cond(seg, out.shape[0]), alt, out)
        b, h, kb, kh = _pairs(seg, seg.v_alt)
        out[b, h] = pattern[b, h] @ seg.v_alt[kb, kh]
        return out

    def fused(self, q: Tensor, segments: list[Segment]) -> bool:
        """Whether to take the fused branch without materialising anything: no hook reads
        ``hook_attn_scores`` / ``hook_pattern`` and :meth:`fusable`."""
        return self.fusable(q, segments) and not _watched(self.hook_attn_scores,
                                                          self.hook_pattern)

    def fusable(self, q: Tensor, segments: list[Segment]) -> bool:
        """Whether the fused kernels may compute ``z``: ``cfg.fused_attention`` is on and no
        gradient must flow through the merge of several segments; never with softcapped
        scores (``cfg.decoder.attn_softcap``), which the kernels cannot compute."""
        if not self.cfg.fused_attention or self.cfg.decoder.attn_softcap is not None:
            return False
        if len(segments) == 1 or not torch.is_grad_enabled():
            return True
        return not any(
            t is not None and t.requires_grad
            for seg in segments
            for t in (q, seg.k, seg.v, seg.k_alt, seg.v_alt)
        )

    def _materialised(self, q: Tensor, segments: list[Segment], mask: Tensor) -> Tensor:
        """Attention with full scores and pattern, through their hooks.

        Where the hooks only read them (caching: no hook replaced or edited either in place),
        ``z`` is the fused kernels' when :meth:`fusable`, so ``run_with_cache(x)[0]`` equals
        ``model(x)`` bit for bit; gradients (backward hooks on the pattern, ``incl_bwd``) flow
        through ``pattern @ v`` all the same. An edited pattern or edited scores give
        ``z = pattern @ v`` of the edited tensor."""
        scores = [self._scores(q, seg) for seg in segments]
        scores = scores[0] if len(scores) == 1 else torch.cat(scores, dim=-1)
        scores = self.softcap(scores)
        # scores are fresh: the mask is added in place, with no full-size temporary
        scores, kept = through_hook(self.hook_attn_scores, scores.add_(mask))
        pattern = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        pattern, kept_pattern = through_hook(self.hook_pattern, pattern)
        if not (kept and kept_pattern and self.fusable(q, segments)):
            return self._weighted(pattern, segments)
        z = fused_attention(q, segments, mask, self.scaling)
        if not (torch.is_grad_enabled() and pattern.requires_grad):
            return z
        dense = self._weighted(pattern, segments)  # the value of z, the gradient of dense
        return z.detach() + (dense - dense.detach())

    def _weighted(self, pattern: Tensor, segments: list[Segment]) -> Tensor:
        """``z = pattern @ v`` over the segments."""
        z, start = None, 0
        for seg in segments:
            part = pattern if len(segments) == 1 else pattern[..., start : start + seg.length]
            zi = self._values(part, seg)
            z = zi if z is None else z + zi
            start += seg.length
        return z

    # forward -----------------------------------------------------------------------------
    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"] | tuple[Tensor, Tensor, Tensor],
        cos: Float[Tensor, "batch pos d_head"],
        sin: Float[Tensor, "batch pos d_head"],
        mask: Float[Tensor, "batch head_or_1 pos k_pos"],
        past: list[Segment] | None = None,
        alt: SelfAlternative | None = None,
        q_scale: Float[Tensor, "batch pos 1 1"] | None = None,
        shared: KV | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], KV]:
        """Attend from ``x`` to the cached segments ``past`` and to ``x`` itself.

        Args:
            x: Normalised residual stream of the new tokens, or (with ``use_attn_in`` /
                ``use_split_qkv_input``) the normalised query, key and value inputs per head,
                ``[batch, pos, head, d_model]`` (K/V: ``kv_head``).
            cos: Rotary cosines of the new tokens' positions.
            sin: Rotary sines of the new tokens' positions.
            mask: Additive mask over ``[past..., new]`` keys (0 keeps, dtype minimum blocks).
            past: Cached segments (post-RoPE keys), each of batch ``B / r``.
            alt: Alternative keys/values at some of the new tokens' own positions.
            q_scale: Query scale of a layer without RoPE (Llama 4's temperature tuning).
            shared: A K/V-sharing layer's (Gemma 4) keys and values of the new tokens: its
                source layer's, post-RoPE, ``[B, H_kv, pos, d_head]``.

        Returns:
            The attention output and this call's own ``(key, value)``, ``[B, H_kv, pos, d_head]``.
        """
        cfg, spec, d, n_kv = self.cfg, self.cfg.decoder, self.d_head, self.n_kv
        own_kv = shared is None  # Gemma 4: a K/V-sharing layer projects queries only
        if isinstance(x, tuple):  # per-head inputs (split q/k/v inputs, hook_attn_in)
            q, k, v = x
            b, s = q.shape[:2]
            gate = None
            if spec.attn_output_gate:
                gate = torch.einsum("bshm,hmd->bshd", q, self.W_G) + self.b_G
            q = self.hook_q(torch.einsum("bshm,hmd->bshd", q, self.W_Q) + self.b_Q)
            if own_kv:
                k = self.hook_k(torch.einsum("bshm,hmd->bshd", k, self._W_K) + self._b_K)
                v = self.hook_v(self._v_norm(self._values_of(v, k, tuple_inputs=True)))
        else:
            b, s, _ = x.shape
            q, gate = self.q_proj(x), None
            if spec.attn_output_gate:  # per head: d_head query, then d_head gate rows
                q, gate = q.view(b, s, cfg.n_heads, 2 * d).chunk(2, dim=-1)
            q = self.hook_q(q.reshape(b, s, cfg.n_heads, d))
            if own_kv:
                k = self.hook_k(self.k_proj(x).view(b, s, n_kv, d))
                v = self.hook_v(self._v_norm(self._values_of(x, k).view(b, s, n_kv, d)))
        if spec.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k) if own_kv else None
        q, k = self._rotate(q, cos, sin, q_scale), self._rotate(k, cos, sin) if own_kv else None
        q = self.hook_rot_q(q).transpose(1, 2)
        if own_kv:
            k, v = self.hook_rot_k(k).transpose(1, 2), v.transpose(1, 2)
        else:  # the source layer's post-RoPE keys and values, through this layer's hooks
            k = self.hook_rot_k(shared[0].transpose(1, 2)).transpose(1, 2)
            v = self.hook_v(shared[1].transpose(1, 2)).transpose(1, 2)
        own = Segment(k, v)
        if alt is not None:
            src = alt.src[:, None, :, None]
            own = Segment(k, v, torch.where(src, alt.k, k), torch.where(src, alt.v, v), alt.select,
                          queries=alt.queries)
        segments = [*(past or []), own]
        if self.fused(q, segments):
            z = fused_attention(q, segments, mask, self.scaling)
        else:
            z = self._materialised(q, segments, mask)
        z = z.transpose(1, 2)
        if gate is not None:  # Qwen3.5: hook_z is the gated output, what W_O reads
            z = z * torch.sigmoid(self.hook_gate(gate.reshape(z.shape)))
        z = self.hook_z(z)
        if cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bshd,hdm->bshm", z, self.W_O))
            out = result.sum(dim=2) + self.b_O
        else:
            out = self.o_proj(z.reshape(b, s, cfg.n_heads * d))
        return out, (k, v)
