"""Gated-DeltaNet linear attention (Qwen3.5's linear-attention layers), with TransformerLens-style
hooks per head.

A layer projects the normalised residual stream to ``q``, ``k``, ``v`` (one fused projection),
runs a causal depthwise convolution over the positions (kernel ``conv_kernel``) and SiLU on
them, and L2-normalises every query and key head. Each *value head* ``h`` keeps a recurrent
state ``S`` ``[d_k, d_v]``, read and written by the query / key head it shares with
``n_v_heads / n_k_heads - 1`` other value heads. Token ``t`` first decays the state by
``exp(decay_t)``, then writes its value with strength ``beta_t`` (the delta rule:
``S += k_t (beta_t (v_t - k_t S))``), then reads it: ``read_t = (q_t / sqrt(d_k)) S``. The read
passes an RMSNorm gated by ``silu(gate_t)`` and the output projection.

Hooks of ``blocks.{l}.attn`` on a linear-attention layer (``head`` is a value head, ``k_head``
a query / key head):

- ``hook_q`` / ``hook_k`` ``[batch, pos, k_head, d_k]``: after the conv, SiLU and the L2 norm
  (what the recurrence reads; the query before its ``1 / sqrt(d_k)``).
- ``hook_v`` ``[batch, pos, head, d_v]``: after the conv and SiLU.
- ``hook_beta`` ``[batch, pos, head]``: the write strength ``sigmoid(b)``.
- ``hook_decay`` ``[batch, pos, head]``: the log decay ``decay_t <= 0`` of the state.
- ``hook_gate`` ``[batch, pos, head, d_v]``: the output gate before its SiLU.
- ``hook_read`` ``[batch, pos, head, d_v]``: what each query reads from the state.
- ``hook_z`` ``[batch, pos, head, d_v]``: each head's output (gated norm of the read), what
  ``W_O`` reads; ``hook_result`` ``[batch, pos, head, d_model]`` with ``use_attn_result``.

Padding tokens enter as zeros, write nothing and do not decay the state: left padding leaves
it at zero, as in HF. A KV-cache continuation starts from the cached
:class:`~lvlm_lens.model.kv_cache.RecurrentState` (the state and the conv's last inputs), its
own left padding skipped likewise, so a cached run equals the full run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lvlm_lens.model.config import LinearAttentionSpec, LVLMConfig
from lvlm_lens.model.kv_cache import RecurrentState
from lvlm_lens.model.linear_refusal import LinearLayerError, linear_layer_message

__all__ = ["GatedDeltaNet", "RecurrentPast", "delta_rule", "write_weights"]

#: What an attention layer has and a Gated-DeltaNet layer does not (TL's per-head weights).
_ATTENTION_ONLY = frozenset({"W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "b_O", "OV", "QK"})
HOOKS = ("q", "k", "v", "beta", "decay", "gate", "read", "z", "result")


def _unit(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x`` over its L2 norm (``eps`` under the root), in fp32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def delta_rule(
    q: Float[Tensor, "batch pos head d_k"],
    k: Float[Tensor, "batch pos head d_k"],
    v: Float[Tensor, "batch pos head d_v"],
    beta: Float[Tensor, "batch pos head"],
    decay: Float[Tensor, "batch pos head"],
    state: Float[Tensor, "batch head d_k d_v"] | None = None,
) -> tuple[Float[Tensor, "batch pos head d_v"], Float[Tensor, "batch head d_k d_v"]]:
    """The gated delta rule, token by token in fp64 (the exact value: HF's chunked fp32 kernel
    rounds differently, by ~5e-5 on the tiny model's logits); returns every read and the final
    state, in fp32.

    ``q`` and ``k`` are per value head (already repeated for grouped heads), ``q`` already
    scaled; the state starts at ``state`` (zeros by default)."""
    b, s, h, d_k = k.shape
    q, k, v, beta, decay = (t.double() for t in (q, k, v, beta, decay))
    if state is None:
        state = v.new_zeros(b, h, d_k, v.shape[-1])
    reads = []
    for t in range(s):
        state = state * decay[:, t].exp()[..., None, None]
        k_t = k[:, t]
        recalled = torch.einsum("bhk,bhkv->bhv", k_t, state)
        delta = (v[:, t] - recalled) * beta[:, t, :, None]
        state = state + k_t[..., None] * delta[:, :, None, :]
        reads.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    return torch.stack(reads, dim=1).float(), state.float()


def write_weights(
    q: Float[Tensor, "pos d_k"], k: Float[Tensor, "pos d_k"], decay: Float[Tensor, " pos"]
) -> Float[Tensor, "pos pos"]:
    """``a[t, j]``: the weight of token ``j``'s write in token ``t``'s read, for one value head
    (its query / key head's hooked ``q``, ``k`` and its ``decay``).

    The state after token ``t`` is ``sum_j exp(decay_{j+1} + ... + decay_t) k_j delta_j^T``
    (``delta_j = beta_j (v_j - k_j S)``, what token ``j`` wrote), so the read of ``t`` is
    ``sum_j a[t, j] delta_j`` with ``a[t, j] = (q_t . k_j) / sqrt(d_k) exp(...)`` for
    ``j <= t`` and 0 after: the linear-attention analogue of an attention pattern's row
    (signed, not normalised)."""
    q, k, decay = q.double(), k.double(), decay.double()
    total = decay.cumsum(0)
    gap = total[:, None] - total[None, :]  # decay_{j+1} + ... + decay_t
    causal = torch.ones_like(gap, dtype=torch.bool).tril()
    scores = (q @ k.T) * q.shape[-1] ** -0.5
    return torch.where(causal, scores * gap.clamp(max=0).exp(), 0.0).float()


@dataclass
class RecurrentPast:
    """A cached prefix as a linear-attention layer continues it: the state after the prefix
    (batch ``B / r``, as a KV cache's) and, for head ablation, an alternative state read by
    the selected (row, value head) pairs."""

    clean: RecurrentState
    alt: RecurrentState | None = None
    select: Bool[Tensor, "batch head"] | None = None
    index: tuple[Tensor, Tensor] | None = None  # (rows, heads) of ``select``: sparse path


class GatedDeltaNet(nn.Module):
    """One Gated-DeltaNet layer on the HF module's own weights (HF's ``Qwen3_5GatedDeltaNet``)."""

    def __init__(self, cfg: LVLMConfig, spec: LinearAttentionSpec, hf_attn: nn.Module,
                 layer: int = 0):
        super().__init__()
        self.cfg, self.spec, self.layer = cfg, spec, layer
        self.in_proj_qkv, self.in_proj_z = hf_attn.in_proj_qkv, hf_attn.in_proj_z
        self.in_proj_b, self.in_proj_a = hf_attn.in_proj_b, hf_attn.in_proj_a
        self.conv1d, self.out_proj = hf_attn.conv1d, hf_attn.out_proj
        self.A_log, self.dt_bias = hf_attn.A_log, hf_attn.dt_bias
        self.norm_w = hf_attn.norm.weight
        self.norm_eps = float(hf_attn.norm.variance_epsilon)
        for name in HOOKS:
            setattr(self, f"hook_{name}", HookPoint())

    def __getattr__(self, name: str) -> Any:
        """``W_Q`` / ``W_K`` / ``W_V`` / ``b_*`` / ``OV`` / ``QK`` are refused in one line
        naming the layer and the full-attention layers to pick instead."""
        if name in _ATTENTION_ONLY:
            raise LinearLayerError(linear_layer_message(self.cfg, self.layer, name))
        return super().__getattr__(name)

    @property
    def W_O(self) -> Float[Tensor, "head d_v d_model"]:
        """The output projection per value head."""
        return self.out_proj.weight.T.reshape(self.spec.n_v_heads, self.spec.d_v, -1)

    def _conv(
        self, x: Float[Tensor, "batch pos d_model"], real: Tensor, tail: Tensor | None
    ) -> tuple[Float[Tensor, "batch pos conv"], Float[Tensor, "batch conv tail"]]:
        """Fused q/k/v projection, causal depthwise conv over positions, SiLU; and the conv's
        last ``conv_kernel - 1`` inputs. ``x`` is zero at padding; a cached ``tail`` (the
        inputs before) sits right before each row's first real token, so the left padding of
        a continuation is skipped as a run's own left padding is."""
        mixed = self.in_proj_qkv(x).transpose(1, 2)
        w = self.conv1d.weight
        pad = w.shape[-1] - 1
        full = F.pad(mixed, (pad, 0))
        if tail is not None and pad:
            lead = (real.long().cumsum(-1) == 0).sum(-1)  # leading padding per row
            cols = (lead[:, None] + torch.arange(pad, device=x.device))[:, None]
            full = full.scatter_add(2, cols.expand(-1, full.shape[1], -1),
                                    tail.to(full.dtype).expand(full.shape[0], -1, -1))
        out = F.conv1d(full, w, self.conv1d.bias, groups=mixed.shape[1])
        return F.silu(out).transpose(1, 2), full[:, :, full.shape[2] - pad :]

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        cos: Tensor,
        sin: Tensor,
        mask: Float[Tensor, "batch head_or_1 pos k_pos"],
        past: RecurrentPast | None = None,
        alt: object | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], RecurrentState]:
        """Run the layer on the new tokens (no rotary: ``cos`` / ``sin`` are unused), after the
        cached state ``past`` if given.

        ``mask`` is the block's additive causal mask: a token is padding where it may not see
        itself; padding writes nothing and leaves the state as it is. ``alt`` (a
        ``SelfAlternative`` whose ``k`` is the baseline's layer input ``[1 or batch, 1, pos,
        d_model]``) and ``past.alt`` make the selected heads read the state built from the
        baseline's input at ``alt.src`` / after the alternative prefix (head ablation, see
        ``docs/concepts/head-ablation.md``). Returns the output and the state after the new
        tokens."""
        if isinstance(past, list):
            raise ValueError("this KV cache holds no recurrent state for Qwen3.5's "
                             "linear-attention layers (e.g. sliced from a longer run): build it "
                             "with model.run_prefix")
        spec = self.spec
        b, s, _ = x.shape
        real = mask[:, 0, :, -s:].diagonal(dim1=-2, dim2=-1) == 0  # [batch, pos]
        x = x * real[..., None].to(x.dtype)
        start = None if past is None else past.clean.rows(b // past.clean.state.shape[0])
        q, k, v, beta, decay, tail = self._inputs(x, real, start, hooked=True)
        gate = self.hook_gate(self.in_proj_z(x).reshape(b, s, spec.n_v_heads, spec.d_v))
        read, state = self._read(q, k, v, beta, decay, real, start)
        if alt is not None or (past is not None and past.alt is not None):
            read = self._switched(read, x, real, past, alt)
        read = self.hook_read(read.to(x.dtype))
        z = self.hook_z(self._gated_norm(read, gate))
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bshd,hdm->bshm", z, self.W_O))
            out = result.sum(dim=2)
        else:
            out = self.out_proj(z.reshape(b, s, -1))
        return out, RecurrentState(state, tail)

    def _switched(self, read: Tensor, x: Tensor, real: Tensor, past: RecurrentPast | None,
                  alt: Any) -> Tensor:
        """``read`` where the selected (row, head) pairs read the alternative state instead."""
        b = x.shape[0]
        if alt is None and past.index is not None:
            return self._switched_pairs(read, x, real, past)
        start = None if past is None else past.alt if past.alt is not None else past.clean
        start = None if start is None else start.rows(b // start.state.shape[0])
        if alt is not None:
            x = torch.where(alt.src[..., None], alt.k[:, 0].to(x.dtype), x)
            x = x * real[..., None].to(x.dtype)
            select, queries = alt.select, alt.queries
        else:
            select, queries = past.select, None
        q, k, v, beta, decay, _ = self._inputs(x, real, start)
        other = self._read(q, k, v, beta, decay, real, start)[0]
        cond = select[:, None, :, None]
        if queries is not None:
            cond = cond & queries.expand(b, -1)[:, :, None, None]
        return torch.where(cond, other.to(read.dtype), read)

    def _switched_pairs(self, read: Tensor, x: Tensor, real: Tensor,
                        past: RecurrentPast) -> Tensor:
        """:meth:`_switched` after a cached prefix, for only the listed (row, head) pairs: each
        pair's own recurrence from the alternative state (the other heads' are not run)."""
        rows, heads = past.index
        src = rows // (x.shape[0] // past.alt.state.shape[0])  # the cached row each one reads
        start = RecurrentState(past.alt.state[src], past.alt.conv[src])
        q, k, v, beta, decay, _ = self._inputs(x[rows], real[rows], start)
        pair = torch.arange(len(rows), device=x.device)
        kh = heads // (self.spec.n_v_heads // self.spec.n_k_heads)
        pad = ~real[rows]
        one = lambda t: t[pair, :, kh][:, :, None]  # noqa: E731  [pairs, pos, 1, d]
        other, _ = delta_rule(
            one(q) * self.spec.d_k**-0.5, one(k), v[pair, :, heads][:, :, None],
            beta[pair, :, heads].masked_fill(pad, 0.0)[..., None],
            decay[pair, :, heads].masked_fill(pad, 0.0)[..., None],
            start.state[pair, heads][:, None],
        )  # fmt: skip
        out = read.clone()
        out[rows, :, heads] = other[:, :, 0].to(read.dtype)
        return out

    def _inputs(self, x: Tensor, real: Tensor, start: RecurrentState | None = None,
                hooked: bool = False) -> tuple[Tensor, ...]:
        """``q``, ``k`` (per key head), ``v``, ``beta`` and ``decay`` of the layer input ``x``
        (through their hooks where ``hooked``), and the conv's new tail."""
        spec = self.spec
        b, s, _ = x.shape
        kd = spec.n_k_heads * spec.d_k
        mixed, tail = self._conv(x, real, None if start is None else start.conv)
        q, k, v = mixed.split([kd, kd, spec.n_v_heads * spec.d_v], dim=-1)
        q = _unit(q.reshape(b, s, spec.n_k_heads, spec.d_k))
        k = _unit(k.reshape(b, s, spec.n_k_heads, spec.d_k))
        v = v.reshape(b, s, spec.n_v_heads, spec.d_v)
        beta = self.in_proj_b(x).sigmoid()
        a = self.in_proj_a(x).float()
        decay = -self.A_log.float().exp() * F.softplus(a + self.dt_bias)
        if hooked:
            q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
            beta, decay = self.hook_beta(beta), self.hook_decay(decay)
        return q, k, v, beta, decay, tail

    def _read(self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, decay: Tensor, real: Tensor,
              start: RecurrentState | None = None) -> tuple[Tensor, Tensor]:
        """Every query's read of its value head's state (q / k repeated per value head) and
        the final state; padding neither writes nor decays."""
        g = self.spec.n_v_heads // self.spec.n_k_heads
        qh, kh = q.repeat_interleave(g, dim=2), k.repeat_interleave(g, dim=2)
        pad = ~real[..., None]
        beta, decay = beta.masked_fill(pad, 0.0), decay.masked_fill(pad, 0.0)
        state = None if start is None else start.state
        return delta_rule(qh * self.spec.d_k**-0.5, kh, v, beta, decay, state)

    def state_after(
        self, x: Float[Tensor, "batch pos d_model"], real: Tensor
    ) -> RecurrentState:
        """The state after running the layer, without hooks, on its input ``x`` (the output of
        ``ln1``; ``real``: not padding): how the head-ablation engine caches the baseline
        side of a prefix."""
        x = x * real[..., None].to(x.dtype)
        q, k, v, beta, decay, tail = self._inputs(x, real)
        return RecurrentState(self._read(q, k, v, beta, decay, real)[1], tail)

    def reads(
        self, x: Float[Tensor, "batch pos d_model"], real: Tensor, skip: Tensor | None = None
    ) -> Float[Tensor, "batch pos head d_v"]:
        """What every query reads from its head's state, on the layer input ``x`` (the output
        of ``ln1``; ``real``: not padding), without hooks: head ablation's and knockout's
        alternative run. Positions in ``skip`` contribute nothing: their conv inputs are zeros
        (so they write nothing) and they do not decay the state."""
        keep = real if skip is None else real & ~skip
        x = x * keep[..., None].to(x.dtype)
        q, k, v, beta, decay, _ = self._inputs(x, real)
        if skip is not None:
            decay = decay.masked_fill(skip[..., None], 0.0)
        return self._read(q, k, v, beta, decay, real)[0].to(x.dtype)

    def _gated_norm(self, read: Tensor, gate: Tensor) -> Tensor:
        """RMSNorm of each head's read (weight ``norm_w``) times ``silu(gate)``, in fp32."""
        rf = read.float()
        normed = rf * torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        out = (self.norm_w * normed.to(read.dtype)) * F.silu(gate.float())
        return out.to(read.dtype)
