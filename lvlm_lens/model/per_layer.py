"""Per-layer input embeddings (Gemma 4's PLE), on the checkpoint's own modules.

Each token gets one small vector per decoder layer: a table of the token ids
(``embed_tokens_per_layer``, scaled by ``sqrt(d_ple)``; an image placeholder, and each id of
the spec's ``pad_embedded_ids``, reads the pad token's row) plus the embeddings, as they
enter the first block, projected (``per_layer_model_projection``, scaled by ``d_model **
-0.5``) and normalised per layer, the sum times ``2 ** -0.5``. After its MLP, block ``l``
adds ``norm(proj(act(gate(resid)) * vector_l))`` to the residual stream
(:class:`PerLayerBlock`).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lvlm_lens.model.norm import RMSNorm


def as_pad(tokens: Int[Tensor, "batch pos"], ids: tuple[int, ...], pad: int) -> Tensor:
    """``tokens`` with each of ``ids`` replaced by ``pad``."""
    return tokens.masked_fill(torch.isin(tokens, torch.tensor(ids, device=tokens.device)), pad)


class PerLayerInputs(nn.Module):
    """The per-layer vectors of a run's tokens, through ``hook_per_layer_inputs``
    ``[batch, pos, layer, d_ple]``."""

    def __init__(self, cfg: Any, hf_lm: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens_per_layer = hf_lm.embed_tokens_per_layer
        self.per_layer_model_projection = hf_lm.per_layer_model_projection
        self.per_layer_projection_norm = RMSNorm(hf_lm.per_layer_projection_norm,
                                                 fp32_weight=cfg.decoder.norm_fp32)
        self.projection_scale = float(hf_lm.per_layer_model_projection_scale)
        self.input_scale = float(hf_lm.per_layer_input_scale)
        self.hook_per_layer_inputs = HookPoint()

    def forward(
        self, ids: Int[Tensor, "batch pos"], embeds: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos layer d_ple"]:
        """The per-layer vectors of tokens ``ids`` whose embeddings (images spliced in, as
        ``hook_embed`` gives them) are ``embeds``."""
        cfg = self.cfg
        d = cfg.decoder.per_layer_input
        pad_as = (cfg.image_token_id, *cfg.decoder.pad_embedded_ids)
        ids = as_pad(ids.to(embeds.device), pad_as, cfg.pad_token_id)
        table = self.embed_tokens_per_layer(ids).reshape(*ids.shape, cfg.n_layers, d)
        proj = self.per_layer_model_projection(embeds) * self.projection_scale
        proj = self.per_layer_projection_norm(proj.reshape(*embeds.shape[:-1], cfg.n_layers, d))
        return self.hook_per_layer_inputs((proj + table) * self.input_scale)


class PerLayerBlock(nn.Module):
    """What block ``l`` adds after its MLP: ``norm(proj(act(gate(resid)) * vector))``, the HF
    layer's ``per_layer_input_gate``, ``per_layer_projection`` and
    ``post_per_layer_input_norm``; the gate's activation through ``hook_pre``."""

    def __init__(self, hf_layer: nn.Module, fp32_weight: bool = False):
        super().__init__()
        self.gate = hf_layer.per_layer_input_gate
        self.act = hf_layer.act_fn
        self.projection = hf_layer.per_layer_projection
        self.norm = RMSNorm(hf_layer.post_per_layer_input_norm, fp32_weight=fp32_weight)
        self.hook_pre = HookPoint()

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"], vector: Float[Tensor, "batch pos d_ple"]
    ) -> Float[Tensor, "batch pos d_model"]:
        """The residual-stream write of the per-layer input."""
        gated = self.hook_pre(self.act(self.gate(resid))) * vector.to(resid.dtype)
        return self.norm(self.projection(gated))


__all__ = ["PerLayerBlock", "PerLayerInputs", "as_pad"]
