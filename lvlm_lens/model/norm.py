"""RMSNorm with TransformerLens hooks (``w`` or Gemma's ``1 + w``)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


def through_hook(hook: HookPoint, t: Tensor) -> tuple[Tensor, bool]:
    """``hook(t)`` and whether ``t`` came through unchanged (no hook replaced it or edited it
    in place), so a computation may then take an order of operations that rounds as HF's.
    A backward hook's alias of ``t`` (same storage, shape and strides) counts as ``t``."""
    version = t._version
    out = hook(t)
    same = out is t or (
        isinstance(out, Tensor)
        and out.data_ptr() == t.data_ptr()
        and (out.shape, out.stride(), out.dtype) == (t.shape, t.stride(), t.dtype)
    )
    return out, same and t._version == version


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 as HF does; hooks ``hook_scale`` and ``hook_normalized``.

    ``hook_scale`` is ``sqrt(mean(x^2) + eps)``, the divisor that
    ``ActivationCache.apply_ln_to_stack`` uses. The weight is *not* folded into the next
    layer, so ``hook_normalized`` is ``weight * x / scale``, with ``weight = offset + w``
    (``offset`` 1 for Gemma's ``1 + w`` norms, which also multiply in fp32, as ``fp32_weight``
    norms do: Gemma 4's ``w``). Unless a hook
    changes ``hook_scale``, ``x`` is multiplied by ``rsqrt(mean(x^2) + eps)`` as in HF (not
    divided by the scale), so bf16 outputs round exactly as HF's do.
    """

    def __init__(self, hf_norm: nn.Module, offset: float = 0.0, fp32_weight: bool = False):
        super().__init__()
        self.w = hf_norm.weight
        self.offset = offset
        self.fp32_weight = fp32_weight or bool(offset)
        self.eps = float(getattr(hf_norm, "variance_epsilon", getattr(hf_norm, "eps", 1e-6)))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    @property
    def weight(self) -> Float[Tensor, " d"]:
        """The effective multiplier ``offset + w``."""
        return self.w + self.offset if self.offset else self.w

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """Normalise ``x`` over its last dimension."""
        xf = x.to(torch.float32)
        var = xf.pow(2).mean(-1, keepdim=True) + self.eps
        scale, untouched = through_hook(self.hook_scale, var.sqrt())
        if untouched:  # HF's rounding
            normed = xf * torch.rsqrt(var)
        else:
            normed = xf / scale
        if self.fp32_weight:  # Gemma's: multiplied in fp32, rounded once
            return self.hook_normalized((normed * (self.w.float() + self.offset)).to(x.dtype))
        return self.hook_normalized(self.w * normed.to(x.dtype))
