"""TransformerLens' whole-model head sweeps on a model with linear-attention layers (Qwen3.5).

A TL user expects ``head_detector.detect_head(model, seq, ...)`` and the
``patching.get_act_patch_attn_head_*`` / ``get_act_patch_direct_path`` sweeps to give an
``[n_layers, n_heads]`` (or ``[n_layers, pos, n_heads]`` ...) score over every layer. A
Gated-DeltaNet layer has no attention pattern and no attention heads (its value heads are
neither ``n_heads`` many nor heads that attend), so in a sweep over *every* layer its rows are
**NaN**, never a number that could be read as a score; the full-attention layers' rows are
what TL computes. A linear layer *picked* by the caller (``detect_head(..., heads=...)``, an
explicit ``index_df``, a direct-path source) is refused in one line naming the full-attention
layers. (``get_act_patch_direct_path_all_sources`` gives a linear *source* layer NaN rows.)

How: TL's sweep functions are recognised on the call stack (a sweep over every layer is
``detect_head`` with ``heads=None``, ``generic_activation_patch`` without an ``index_df``, a
direct-path sweep's destinations). Inside one, a linear layer's missing ``hook_pattern`` in an
activation cache reads as a NaN stand-in of TL's shape, and a sweep's hook on a linear layer's
head point sets that layer's ``hook_attn_out`` to NaN, so the patched run's logits, and the
metric, are NaN. ``detect_head(error_measure="abs")`` cannot score a NaN pattern (TL asserts
its difference is lower triangular), so over every layer it is refused, naming ``heads=``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformer_lens import head_detector, patching

from lvlm_lens.model.linear_refusal import LinearLayerError, full_attention_layers

__all__ = ["sweep_kind", "sweep_hook", "nan_stand_in", "direct_path_source"]

#: A TL hook name of a layer's attention heads: ``blocks.{l}.attn.hook_*`` or the split inputs.
_HEAD_NAME = re.compile(r"^blocks\.(\d+)\.(?:attn\.)?(hook_\w+)$")
#: The points TL's head sweeps hook: per-head vectors, patterns, split inputs.
_HEAD_POINTS = {"hook_q", "hook_k", "hook_v", "hook_z", "hook_result", "hook_pattern",
                "hook_attn_scores", "hook_q_input", "hook_k_input", "hook_v_input",
                "hook_attn_in"}  # fmt: skip
#: How far up the stack a sweep function is looked for (its helpers are a few frames deep).
_DEPTH = 24


def _detect_head_kind(f: Any) -> str:
    if f.f_locals.get("heads") is not None:
        return "picked"
    if f.f_locals.get("error_measure") == "abs":
        return "abs"
    return "all"


_SWEEPS: dict[Any, Callable[[Any], str]] = {
    head_detector.detect_head.__code__: _detect_head_kind,
    patching.generic_activation_patch.__code__:
        lambda f: "picked" if f.f_locals.get("flattened_output", True) else "all",
    patching.get_act_patch_direct_path.__code__: lambda f: (
        "direct_all" if f.f_back is not None
        and f.f_back.f_code is patching.get_act_patch_direct_path_all_sources.__code__
        else "direct"),
}


def sweep_kind(via: str | None = None) -> str | None:
    """Which TL sweep the caller is inside: ``"all"`` (every layer), ``"direct"`` (a
    direct-path sweep's destinations; ``"direct_all"`` when every source is swept too),
    ``"abs"`` (``detect_head`` over every layer with ``error_measure="abs"``), ``"picked"``
    (layers the caller chose), or ``None``. With ``via``, only a sweep that called the
    function of that name itself (``run_with_hooks``: its own patching hooks, not the caching
    hooks of a ``run_with_cache`` inside it)."""
    f, child = sys._getframe(1), None
    for _ in range(_DEPTH):
        if f is None:
            return None
        kind = _SWEEPS.get(f.f_code)
        if kind is not None:
            return kind(f) if via is None or (child and child.co_name == via) else None
        f, child = f.f_back, f.f_code
    return None


def head_point(name: Any) -> tuple[int, str] | None:
    """``(layer, point)`` if ``name`` is a head point TL's sweeps hook, else ``None``."""
    m = _HEAD_NAME.match(name) if isinstance(name, str) else None
    if m is None or m.group(2) not in _HEAD_POINTS:
        return None
    return int(m.group(1)), m.group(2)


def nan_stand_in(cfg: Any, cache: dict, point: str) -> Tensor:
    """A NaN ``hook_pattern`` / ``hook_attn_scores`` of TL's shape (``[batch, head, pos,
    pos]``, no batch axis in a ``remove_batch_dim`` cache) for a linear layer in a sweep."""
    resid = cache.get("blocks.0.hook_resid_pre")
    if resid is None:
        resid = next(t for t in cache.values() if isinstance(t, Tensor) and t.ndim >= 2)
    lead, pos = tuple(resid.shape[:-2]), resid.shape[-2]
    return torch.full((*lead, cfg.n_heads, pos, pos), float("nan"), dtype=resid.dtype,
                      device=resid.device)  # fmt: skip


def sweep_hook(model: Any, name: Any, hook: Any) -> tuple[Any, Any]:
    """The hook TL's sweep adds on ``name``: unchanged unless it is a linear layer's head point
    inside a sweep; then ``(blocks.{l}.hook_attn_out, NaN)`` over every layer, a one-line
    refusal for a picked layer."""
    where = head_point(name)
    if where is None or where[0] >= model.cfg.n_layers or model.attn_kind(where[0]) != "linear":
        return name, hook
    kind = sweep_kind(via="run_with_hooks")
    if kind is None:
        return name, hook
    layer, point = where
    if kind == "picked":
        raise LinearLayerError(
            f"{name}: layer {layer} is a linear-attention (Gated-DeltaNet) layer, which has no "
            f"attention heads to patch; pick a full-attention layer: "
            f"{full_attention_layers(model.cfg)}")  # fmt: skip
    cfg, tl_hook = model.cfg, hook

    def nan_out(attn_out: Tensor, hook: Any) -> Tensor:
        if kind.startswith("direct"):  # TL checks that its hook ran: run it on a stand-in
            b, p, d = attn_out.shape
            tl_hook(attn_out.new_zeros(b, p, cfg.n_heads, d), hook=hook)
        return torch.full_like(attn_out, float("nan"))

    return f"blocks.{layer}.hook_attn_out", nan_out


def direct_path_source(model: Any, key: Any, value: Tensor) -> Tensor:
    """A cache's ``value`` for ``key``, unless ``key`` is a linear layer's ``hook_z`` read as a
    direct-path source: NaN (so its row is NaN) when every source is swept, refused in one
    line for one source (its value heads are not attention heads)."""
    where = head_point(key)
    if where is None or where[1] != "hook_z" or model.attn_kind(where[0]) != "linear":
        return value
    kind = sweep_kind()
    if kind == "direct_all":
        return torch.full_like(value, float("nan"))
    if kind == "direct":
        raise LinearLayerError(
            f"{key}: layer {where[0]} is a linear-attention (Gated-DeltaNet) layer, whose value "
            f"heads are not attention heads to patch a path from; pick a full-attention source "
            f"layer: {full_attention_layers(model.cfg)}")  # fmt: skip
    return value
