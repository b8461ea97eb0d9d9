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


def _per_head(proj: str, shape: str, bias: bool = False, per_query: bool = False) -> property:
    """A block property: ``<proj>``'s weight ``[head, d_model, d_head]`` (or bias ``[head,
    d_head]``, zeros if it has none), K/V heads repeated per query head if ``per_query``."""

    def get(self: Any) -> Tensor:
        lin, d = getattr(self, proj), getattr(self, "d_head", self.cfg.d_head)
        if lin is None and proj == "v_proj" and self.k_proj is not None:
            lin = self.k_proj  # Gemma 4's attention_k_eq_v: the values are the keys' projection
        if lin is None:
            raise ValueError(f"this layer has no {proj}: it attends with the keys and values "
                             f"of layer {self.cfg.decoder.kv_from(self.layer)} (K/V sharing); "
                             "read that layer's weights")
        if not bias:
            out = einops.rearrange(lin.weight, "(h d) m -> h m d", d=d)
        elif lin.bias is None:
            out = lin.weight.new_zeros(lin.out_features // d, d)
        else:
            out = lin.bias.view(-1, d)
        if proj == "q_proj" and self.cfg.decoder.attn_output_gate:  # query, gate rows per head
            out = out[0::2]
        g = self.cfg.n_heads // getattr(self, "n_kv", self.cfg.n_key_value_heads)
        return out.repeat_interleave(g, dim=0) if per_query else out

    get.__annotations__ = {"return": Float[Tensor, shape]}
    what = "bias" if bias else "weight"
    return property(get, doc=f"``{proj}``'s {what} per head: ``[{shape}]``.")


class Circuits:
    """``QK`` and ``OV`` as ``FactoredMatrix`` ``[(layer,) head, d_model, d_model]``, from
    ``W_Q``/``W_K``/``W_V``/``W_O`` (given per query head)."""

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per query head."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per query head."""
        return FactoredMatrix(self.W_V, self.W_O)


class AttentionWeights(Circuits):
    """Weight views of one attention block (needs ``cfg`` and the HF ``q/k/v/o_proj``)."""

    cfg: Any
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear

    W_Q = _per_head("q_proj", "head d_model d_head")
    W_K = _per_head("k_proj", "head d_model d_head", per_query=True)
    W_V = _per_head("v_proj", "head d_model d_head", per_query=True)
    _W_K = _per_head("k_proj", "kv_head d_model d_head")
    _W_V = _per_head("v_proj", "kv_head d_model d_head")
    b_Q = _per_head("q_proj", "head d_head", bias=True)
    b_K = _per_head("k_proj", "head d_head", bias=True, per_query=True)
    b_V = _per_head("v_proj", "head d_head", bias=True, per_query=True)
    _b_K = _per_head("k_proj", "kv_head d_head", bias=True)
    _b_V = _per_head("v_proj", "kv_head d_head", bias=True)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        d = getattr(self, "d_head", self.cfg.d_head)  # Gemma 4: per layer
        return einops.rearrange(self.o_proj.weight, "m (h d) -> h d m", d=d)

    @property
    def b_O(self) -> Float[Tensor, " d_model"]:
        b = self.o_proj.bias
        return b if b is not None else self.o_proj.weight.new_zeros(self.cfg.d_model)


def _stacked(path: str, shape: str) -> property:
    """A model property stacking ``blocks[l].<path>`` over layers (TransformerLens' stacks)."""
    module, name = path.split(".")

    def get(self: Any) -> Tensor:
        # a ValueError, not an AttributeError (nn.Module would hide it behind "no attribute")
        mods = [getattr(b, module) for b in self.blocks]
        kinds = {type(m).__name__ for m in mods if not hasattr(type(m), name)}
        if kinds:
            raise ValueError(f"{name} is not stacked over layers: {' / '.join(sorted(kinds))} "
                             f"layers have no {name}; read blocks[l].{path} per layer")
        per_layer = [getattr(m, name) for m in mods]
        if len({tuple(t.shape) for t in per_layer}) > 1:
            shapes = sorted({str(list(t.shape)) for t in per_layer})
            raise ValueError(f"{name} is not stacked over layers: they differ in shape "
                             f"({', '.join(shapes)}; a sparse-MoE layer is per expert); read "
                             f"blocks[l].{path} per layer")
        return torch.stack(per_layer)

    get.__annotations__ = {"return": Float[Tensor, shape]}
    return property(get, doc=f"``blocks[l].{path}`` stacked over layers: ``[{shape}]``.")


class ModelWeights(Circuits):
    """Weights of every layer stacked as TransformerLens does, and the unembedding directions
    (needs ``cfg``, ``blocks``, ``embed``, ``unembed``, ``ln_final`` and ``to_single_token``).
    A gated cross-attention layer (Llama 3.2 Vision) stacks its cross-attention weights
    (``blocks[l].attn`` is its ``cross_attn``: ``W_K`` / ``W_V`` read the image side, and its
    output passes the attention gate, which is not folded in)."""

    cfg: Any
    blocks: Any
    embed: Any
    unembed: Any
    ln_final: Any
    to_single_token: Any

    W_Q = _stacked("attn.W_Q", "layer head d_model d_head")
    W_K = _stacked("attn.W_K", "layer head d_model d_head")
    W_V = _stacked("attn.W_V", "layer head d_model d_head")
    _W_K = _stacked("attn._W_K", "layer kv_head d_model d_head")
    _W_V = _stacked("attn._W_V", "layer kv_head d_model d_head")
    W_O = _stacked("attn.W_O", "layer head d_head d_model")
    b_Q = _stacked("attn.b_Q", "layer head d_head")
    b_K = _stacked("attn.b_K", "layer head d_head")
    b_V = _stacked("attn.b_V", "layer head d_head")
    _b_K = _stacked("attn._b_K", "layer kv_head d_head")
    _b_V = _stacked("attn._b_V", "layer kv_head d_head")
    b_O = _stacked("attn.b_O", "layer d_model")
    W_in = _stacked("mlp.W_in", "layer d_model d_mlp")
    W_gate = _stacked("mlp.W_gate", "layer d_model d_mlp")
    W_out = _stacked("mlp.W_out", "layer d_mlp d_model")
    b_in = _stacked("mlp.b_in", "layer d_mlp")
    b_out = _stacked("mlp.b_out", "layer d_model")

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        """Token embedding matrix."""
        return self.embed.W_E

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """Unembedding matrix (``ln_final``'s weight not folded in)."""
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        """Unembedding bias (zeros if the checkpoint has none)."""
        return self.unembed.b_U

    def tokens_to_residual_directions(
        self, tokens: int | str | list[int] | list[str] | Tensor
    ) -> Float[Tensor, "... d_model"]:
        """Unembedding directions of tokens, with ``ln_final``'s weight folded in (as
        TransformerLens with ``fold_ln``), so that ``ActivationCache.logit_attrs`` sums exactly
        to the logit.

        Shapes as TransformerLens: one token (a string that is one token, an ``int``, a
        one-element tensor) gives ``[d_model]``; a tensor of several gives its shape plus
        ``d_model``; a list of ``n`` ids or one-token strings gives ``[n, d_model]``.
        """
        is_list = isinstance(tokens, list | tuple)
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        elif is_list:
            tokens = [self.to_single_token(t) if isinstance(t, str) else int(t) for t in tokens]
        tokens = torch.as_tensor(tokens, device=self.unembed.lm_head.weight.device)
        if tokens.is_floating_point():
            raise TypeError(f"tokens must be token ids or one-token strings, got {tokens.dtype}")
        if tokens.numel() == 1 and not is_list:  # TransformerLens: one token -> [d_model]
            tokens = tokens.reshape(())
        return self.unembed.lm_head.weight[tokens] * self.ln_final.weight  # (1 + w) for Gemma

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Sum of the output biases written to the residual stream before ``layer``."""
        total = self.unembed.lm_head.weight.new_zeros(self.cfg.d_model)
        for i in range(layer + int(mlp_input)):
            if not getattr(self.blocks[i], "linear", False):  # a DeltaNet's out_proj: no bias
                total = total + self.blocks[i].attn.b_O
            if include_mlp_biases and i < layer:
                total = total + self.blocks[i].mlp.b_out
        return total
