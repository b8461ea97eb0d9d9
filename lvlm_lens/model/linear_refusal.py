"""One-line refusals for what a Gated-DeltaNet (linear-attention) layer does not have.

TransformerLens' analysis tools read attention-only names layer by layer:
``detect_head`` reads ``cache["pattern", l, "attn"]``, ``SVDInterpreter`` reads
``tl_parameters()["blocks.{l}.attn.W_V"]``. On a Qwen3.5 linear-attention layer those names do
not exist; the lookups here fail with a message naming the layer, saying it is a
linear-attention layer and listing the full-attention layers to pick instead (never TL's bare
``KeyError`` or ``GatedDeltaNet has no W_Q``). Inside TransformerLens' sweeps over every layer
a missing pattern reads as NaN instead (:mod:`~lvlm_lens.model.linear_sweeps`).
"""

from __future__ import annotations

import re
from typing import Any

from lvlm_lens.model.config import LVLMConfig

__all__ = ["LinearLayerError", "LinearAwareDict", "linear_layer_message"]

_NAME = re.compile(r"^blocks\.(\d+)\.attn\.(\w+)$")


class LinearLayerError(KeyError, AttributeError):
    """A name asked of a linear-attention layer that only attention layers have (a
    ``KeyError`` for dict lookups, an ``AttributeError`` for attributes; printed as one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def full_attention_layers(cfg: LVLMConfig) -> list[int]:
    """The layers that are not linear-attention layers."""
    lin = cfg.decoder.linear_attention
    linear = set(lin.layers) if lin is not None else set()
    return [i for i in range(cfg.n_layers) if i not in linear]


def linear_layer_message(cfg: LVLMConfig, layer: int, what: str) -> str | None:
    """The refusal for ``what`` (e.g. ``hook_pattern``) of ``layer``, or ``None`` where
    ``layer`` is not a linear-attention layer."""
    lin = cfg.decoder.linear_attention
    if lin is None or layer not in lin.layers:
        return None
    return (f"blocks.{layer}.attn.{what}: layer {layer} is a linear-attention (Gated-DeltaNet) "
            f"layer, which has no {what}; pick a full-attention layer: "
            f"{full_attention_layers(cfg)}")  # fmt: skip


class LinearAwareDict(dict):
    """A dict of ``blocks.{l}.attn.*`` names whose missing linear-layer names raise
    :class:`LinearLayerError` (an activation cache's, ``tl_parameters()``)."""

    def __init__(self, data: Any, cfg: LVLMConfig):
        super().__init__(data)
        self.cfg = cfg

    def __missing__(self, key: Any) -> Any:
        m = _NAME.match(key) if isinstance(key, str) else None
        msg = m and linear_layer_message(self.cfg, int(m.group(1)), m.group(2))
        if not msg:
            raise KeyError(key)
        from lvlm_lens.model import linear_sweeps  # imports this module

        kind = linear_sweeps.sweep_kind()
        if kind == "all" and m.group(2) in ("hook_pattern", "hook_attn_scores"):
            return linear_sweeps.nan_stand_in(self.cfg, self, m.group(2))  # a NaN row
        if kind == "abs":
            raise LinearLayerError(
                f"{msg}; detect_head(error_measure='abs') cannot give its rows NaN: pass "
                f"heads= over the full-attention layers, or use error_measure='mul'")
        raise LinearLayerError(msg)
