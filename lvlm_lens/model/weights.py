"""TransformerLens-shaped weight views, per attention block and stacked over layers.

Shapes follow TransformerLens' ``HookedTransformer``: ``W_Q`` ``[(layer,) head, d_model,
d_head]``, ``W_O`` ``[(layer,) head, d_head, d_model]``, ``W_in``/``W_gate`` ``[(layer,)
d_model, d_mlp]``, ``W_out`` ``[(layer,) d_mlp, d_model]``, ``W_E`` ``[d_vocab, d_model]``,
``W_U`` ``[d_model, d_vocab]``; ``QK`` and ``OV`` are ``transformer_lens.FactoredMatrix``
``[(layer,) head, d_model, d_model]`` (pre-RoPE: rotary embeddings are not a weight).

Grouped-query attention (as ``HookedTransformer``'s ``GroupedQueryAttention``): ``W_K``, ``W_V``,
``b_K`` and ``b_V`` are given per *query* head, each key/value head repeated for the query heads
that read it, so ``W_K[l, h]`` is what query head ``h`` reads and per-head formulas need no
index arithmetic; ``_W_K``, ``_W_V``, ``_b_K`` and ``_b_V`` are the checkpoint's own
per-key/value-head weights (what TransformerLens 4's ``TransformerBridge`` calls ``W_K``...).

The views share storage with the HF parameters (``W_K``/``W_V`` and stacks are copies); RMSNorm
weights are *not* folded in (see ``tokens_to_residual_directions`` for the folded unembedding).
A bias the checkpoint does not have is zeros.
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.FactoredMatrix import FactoredMatrix


def _bias(lin: nn.Linear, *shape: int) -> Tensor:
    if lin.bias is None:
        return lin.weight.new_zeros(shape)
    return lin.bias.view(shape)


class AttentionWeights:
    """Weight views of one attention block (needs ``cfg`` and the HF ``q/k/v/o_proj``)."""

    cfg: Any
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear

    def _heads_in(self, lin: nn.Linear) -> Tensor:
        return einops.rearrange(lin.weight, "(h d) m -> h m d", d=self.cfg.d_head)

    def _per_query_head(self, x: Tensor) -> Tensor:
        return x.repeat_interleave(self.cfg.n_heads // self.cfg.n_key_value_heads, dim=0)

    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        return self._heads_in(self.q_proj)

    @property
    def _W_K(self) -> Float[Tensor, "kv_head d_model d_head"]:
        return self._heads_in(self.k_proj)

    @property
    def _W_V(self) -> Float[Tensor, "kv_head d_model d_head"]:
        return self._heads_in(self.v_proj)

    @property
    def W_K(self) -> Float[Tensor, "head d_model d_head"]:
        return self._per_query_head(self._W_K)

    @property
    def W_V(self) -> Float[Tensor, "head d_model d_head"]:
        return self._per_query_head(self._W_V)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        return einops.rearrange(self.o_proj.weight, "m (h d) -> h d m", d=self.cfg.d_head)

    @property
    def b_Q(self) -> Float[Tensor, "head d_head"]:
        return _bias(self.q_proj, self.cfg.n_heads, self.cfg.d_head)

    @property
    def _b_K(self) -> Float[Tensor, "kv_head d_head"]:
        return _bias(self.k_proj, self.cfg.n_key_value_heads, self.cfg.d_head)

    @property
    def _b_V(self) -> Float[Tensor, "kv_head d_head"]:
        return _bias(self.v_proj, self.cfg.n_key_value_heads, self.cfg.d_head)

    @property
    def b_K(self) -> Float[Tensor, "head d_head"]:
        return self._per_query_head(self._b_K)

    @property
    def b_V(self) -> Float[Tensor, "head d_head"]:
        return self._per_query_head(self._b_V)

    @property
    def b_O(self) -> Float[Tensor, " d_model"]:
        return _bias(self.o_proj, self.cfg.d_model)

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per query head, ``[head, d_model, d_model]``."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per query head, ``[head, d_model, d_model]``."""
        return FactoredMatrix(self.W_V, self.W_O)


def _stack(model: Any, path: str) -> Tensor:
    module, name = path.split(".")
    return torch.stack([getattr(getattr(b, module), name) for b in model.blocks])


class ModelWeights:
    """Weights of every layer stacked as TransformerLens does, and the unembedding directions
    (needs ``cfg``, ``blocks``, ``embed``, ``unembed``, ``ln_final`` and ``to_single_token``)."""

    cfg: Any
    blocks: Any
    embed: Any
    unembed: Any
    ln_final: Any
    to_single_token: Any

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        return self.unembed.b_U

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return _stack(self, "attn.W_Q")

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return _stack(self, "attn.W_K")

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return _stack(self, "attn.W_V")

    @property
    def _W_K(self) -> Float[Tensor, "layer kv_head d_model d_head"]:
        return _stack(self, "attn._W_K")

    @property
    def _W_V(self) -> Float[Tensor, "layer kv_head d_model d_head"]:
        return _stack(self, "attn._W_V")

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return _stack(self, "attn.W_O")

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return _stack(self, "attn.b_Q")

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return _stack(self, "attn.b_K")

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return _stack(self, "attn.b_V")

    @property
    def _b_K(self) -> Float[Tensor, "layer kv_head d_head"]:
        return _stack(self, "attn._b_K")

    @property
    def _b_V(self) -> Float[Tensor, "layer kv_head d_head"]:
        return _stack(self, "attn._b_V")

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return _stack(self, "attn.b_O")

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return _stack(self, "mlp.W_in")

    @property
    def W_gate(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return _stack(self, "mlp.W_gate")

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return _stack(self, "mlp.W_out")

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return _stack(self, "mlp.b_in")

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return _stack(self, "mlp.b_out")

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per layer and query head, ``[layer, head, d_model, d_model]``."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per layer and query head, ``[layer, head, d_model, d_model]``."""
        return FactoredMatrix(self.W_V, self.W_O)

    def tokens_to_residual_directions(
        self, tokens: int | str | Tensor
    ) -> Float[Tensor, "... d_model"]:
        """Unembedding directions of tokens, with ``ln_final``'s weight folded in, so that
        ``ActivationCache.logit_attrs`` sums exactly to the logit."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        tokens = torch.as_tensor(tokens, device=self.unembed.lm_head.weight.device)
        return self.unembed.lm_head.weight[tokens] * self.ln_final.w

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Sum of the output biases written to the residual stream before ``layer``."""
        total = self.unembed.lm_head.weight.new_zeros(self.cfg.d_model)
        for i in range(layer + int(mlp_input)):
            total = total + self.blocks[i].attn.b_O
            if include_mlp_biases and i < layer:
                total = total + self.blocks[i].mlp.b_out
        return total
