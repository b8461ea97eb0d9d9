"""What TransformerLens' analysis tools read from a model, on :class:`~lvlm_lens.HookedLVLM`.

- ``tl_parameters()``: the weights under TransformerLens' names (``blocks.{l}.attn.W_V``,
  ``blocks.{l}.mlp.W_in``, ``blocks.{l}.ln2.w``, ``unembed.W_U`` ...), which
  ``transformer_lens.SVDInterpreter`` reads.
- ``all_composition_scores(mode)`` and ``all_head_labels``, as ``HookedTransformer``'s.
- TransformerLens 4's names of the split inputs, ``blocks.{l}.attn.hook_q_input`` /
  ``hook_k_input`` / ``hook_v_input`` (what ``patching.get_act_patch_direct_path`` hooks), are
  accepted for ``blocks.{l}.hook_q_input`` ... wherever a hook is added by name; so are
  ``blocks.{l}.attn.hook_*`` for ``blocks.{l}.cross_attn.hook_*`` on a cross-attention layer.
  ``attn_hook_name(layer, point)`` gives a layer's real name, ``attn_kind(layer)`` its kind.
- Sandwich-norm blocks (Gemma 3) declare their post-attention norm the way TransformerLens'
  direct-path check looks for it, so direct-path patching is refused there (a head's write
  to the residual stream is not ``z @ W_O`` when a norm follows the head sum).
- Inside ``model.bind(inp)``, token ids that *start with* ``inp.input_ids`` (each row, or every
  row when ``inp`` is one example) run with ``inp``'s images, the rest as text: what
  ``utilities.test_prompt`` builds from ``model.to_tokens(inp)`` plus the answer.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.utilities import composition_scores

from lvlm_lens.model.blocks import GatedMLP
from lvlm_lens.model.generate import extend_input
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.linear_refusal import LinearAwareDict
from lvlm_lens.model.linear_sweeps import sweep_hook

#: TransformerLens 4's names of the split q/k/v inputs, and the names they stand for here.
_BRIDGE_NAME = re.compile(r"^blocks\.(\d+)\.attn\.hook_([qkv])_input$")
#: TransformerLens' name of an attention hook, ``blocks.{l}.attn.hook_*``.
_ATTN_NAME = re.compile(r"^blocks\.(\d+)\.attn\.(hook_\w+)$")
#: A cross-attention layer's attention hook, ``blocks.{l}.cross_attn.hook_*``.
_CROSS_NAME = re.compile(r"^blocks\.(\d+)\.cross_attn\.(hook_\w+)$")


def tl_attn_name(name: str) -> str:
    """TransformerLens' name (``blocks.{l}.attn.hook_*``) of a cross-attention layer's hook
    ``blocks.{l}.cross_attn.hook_*``; any other name unchanged."""
    return _CROSS_NAME.sub(r"blocks.\1.attn.\2", name)


def resolve_hook_name(name: Any) -> Any:
    """``blocks.{l}.hook_q_input`` for TL 4's ``blocks.{l}.attn.hook_q_input`` (and k, v);
    any other name (or a filter function) unchanged."""
    if isinstance(name, str):
        m = _BRIDGE_NAME.match(name)
        if m:
            return f"blocks.{m.group(1)}.hook_{m.group(2)}_input"
    return name


def with_bound_images(bound: LVLMInput, tokens: Tensor, image_token_id: int) -> LVLMInput | None:
    """``bound`` followed by the rest of ``tokens`` as text, if every row of ``tokens`` starts
    with ``bound``'s ids (``bound`` of one example is repeated for every row); else ``None``."""
    n, p = bound.input_ids.shape
    rows, length = tokens.shape
    if length < p or not (rows == n or n == 1):
        return None
    base = bound if rows == n else bound.select([0] * rows)
    if not torch.equal(tokens[:, :p], base.input_ids):
        return None
    extra = tokens[:, p:]
    if extra.shape[1] == 0:
        return base
    if (extra == image_token_id).any():  # an image placeholder with no image: refused later
        return None
    return extend_input(base, extra, torch.ones_like(extra))


#: The per-head attention weights under TL's names (none on a linear-attention layer).
_ATTN = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")


class HeadLabels(list):
    """``['L0H0', 'L0H1', ...]``: a list (TL 4's property) that is also callable
    (``HookedTransformer``'s method), returning itself."""

    def __call__(self) -> list[str]:
        return self


class AnalysisMixin:
    """The analysis surface of :class:`~lvlm_lens.HookedLVLM` (needs ``cfg``, ``blocks``,
    ``embed``, ``unembed``, ``ln_final`` and the stacked weights of
    :class:`~lvlm_lens.model.weights.ModelWeights`)."""

    cfg: Any
    blocks: Any
    embed: Any
    unembed: Any
    ln_final: Any

    def tl_parameters(self) -> dict[str, Tensor]:
        """The weights under TransformerLens' parameter names.

        Per layer ``blocks.{l}.attn.W_Q/W_K/W_V/W_O/b_Q/b_K/b_V/b_O`` (K and V per query head,
        as ``W_K``), ``blocks.{l}.ln1.w`` / ``ln2.w`` (the effective RMSNorm weight, Gemma's
        ``1 + w``), and, on dense-MLP layers only, ``blocks.{l}.mlp.W_in/W_gate/W_out/b_in/
        b_out``; then ``embed.W_E``, ``ln_final.w``, ``unembed.W_U`` and ``unembed.b_U``. A
        sparse-MoE layer has no MLP entries, so ``SVDInterpreter`` refuses it as TL does.
        """
        out: dict[str, Tensor] = {}
        for i, block in enumerate(self.blocks):
            names = () if getattr(block, "linear", False) else _ATTN
            for name in names:  # a linear-attention layer has none: refused on lookup
                out[f"blocks.{i}.attn.{name}"] = getattr(block.attn, name)
            out[f"blocks.{i}.ln1.w"] = block.ln1.weight
            out[f"blocks.{i}.ln2.w"] = block.ln2.weight
            if isinstance(block.mlp, GatedMLP):  # not SparseMoE's per-expert weights
                for name in ("W_in", "W_gate", "W_out", "b_in", "b_out"):
                    out[f"blocks.{i}.mlp.{name}"] = getattr(block.mlp, name)
        out["embed.W_E"] = self.embed.W_E
        out["ln_final.w"] = self.ln_final.weight
        out["unembed.W_U"] = self.unembed.W_U
        out["unembed.b_U"] = self.unembed.b_U
        return LinearAwareDict(out, self.cfg)

    @property
    def all_head_labels(self) -> HeadLabels:
        """``['L0H0', 'L0H1', ...]``, layer by layer (also callable, as in TL 2/3)."""
        n_heads = self.cfg.n_heads
        layers = range(self.cfg.n_layers)
        return HeadLabels(f"L{i}H{h}" for i in layers for h in range(n_heads))

    def all_composition_scores(
        self, mode: str
    ) -> Float[Tensor, "layer_1 head_1 layer_2 head_2"]:
        """Composition scores of every head pair, as ``HookedTransformer``'s.

        ``scores[l1, h1, l2, h2] = ||OV_{l1 h1} M_{l2 h2}||_F / (||OV_{l1 h1}||_F
        ||M_{l2 h2}||_F)`` with ``M`` the later head's ``QK`` (``mode="Q"``), ``QK^T``
        (``"K"``) or ``OV`` (``"V"``), and 0 where ``l1 >= l2``; NaN where either layer is a
        linear-attention layer (Qwen3.5: no heads). Pre-RoPE and with the RMSNorm weights not
        folded in. (TL 4's bridge returns the same numbers in a
        ``CompositionScores`` wrapper.)
        """
        n = self.cfg.n_layers
        full = [i for i in range(n) if self.attn_kind(i) != "linear"]

        def stack(name: str) -> Tensor:  # over the layers that have attention heads
            if len(full) == n:
                return getattr(self, name)  # the stacked weights come from ModelWeights
            return torch.stack([getattr(self.blocks[i].attn, name) for i in full])

        W_Q, W_K, W_V, W_O = (stack(name) for name in ("W_Q", "W_K", "W_V", "W_O"))
        left = FactoredMatrix(W_V, W_O)
        if mode == "Q":
            right = FactoredMatrix(W_Q, W_K.transpose(-2, -1))
        elif mode == "K":
            right = FactoredMatrix(W_Q, W_K.transpose(-2, -1)).T
        elif mode == "V":
            right = left
        else:
            raise ValueError(f"mode must be 'Q', 'K' or 'V', got {mode!r}")
        part = composition_scores(left, right, broadcast_dims=True)
        layers = torch.tensor(full, device=part.device)
        later = layers[:, None, None, None] < layers[None, None, :, None]
        part = torch.where(later, part, torch.zeros_like(part))
        if len(full) == n:
            return part
        scores = part.new_full((n, self.cfg.n_heads, n, self.cfg.n_heads), float("nan"))
        scores[layers[:, None], :, layers[None, :]] = part.permute(0, 2, 1, 3)
        return scores

    # hook names ---------------------------------------------------------------------------
    def attn_kind(self, layer: int) -> str:
        """The kind of layer ``layer``'s heads: ``"self"``, ``"cross"`` (a gated
        cross-attention layer, Llama 3.2 Vision) or ``"linear"`` (Gated-DeltaNet, Qwen3.5)."""
        block = self.blocks[layer]
        return "cross" if block.cross else "linear" if block.linear else "self"

    def attn_kinds(self) -> list[str]:
        """:meth:`attn_kind` of every layer."""
        return [self.attn_kind(layer) for layer in range(self.cfg.n_layers)]

    def attn_hook_name(self, layer: int, point: str) -> str:
        """The full name of hook ``point`` (``"pattern"``, ``"z"``, ...) of layer ``layer``'s
        attention: ``blocks.{l}.attn.hook_{point}``, ``blocks.{l}.cross_attn.hook_{point}``
        on a cross-attention layer."""
        if not 0 <= layer < self.cfg.n_layers:
            raise ValueError(f"layer {layer} out of range: the model has {self.cfg.n_layers}")
        kind = self.attn_kind(layer)
        name = f"blocks.{layer}.{'cross_attn' if kind == 'cross' else 'attn'}.hook_{point}"
        if name not in self.hook_dict:  # type: ignore[attr-defined]
            raise ValueError(f"layer {layer} ({kind} attention) has no hook_{point}: pick "
                             "another hook point or leave that layer out")
        return name

    def _resolve(self, name: Any, strict: bool = False) -> Any:
        """TL 4's split-input names, and TL's ``blocks.{l}.attn.hook_*`` on a cross-attention
        layer (its hooks are ``cross_attn.hook_*``), as the names they stand for here; a name
        filter function selects a cross-attention layer's hook when it accepts either name.
        ``strict``: a TL name of a point the cross-attention layer lacks is refused."""
        if callable(name):
            return lambda n: bool(name(n)) or bool(name(tl_attn_name(n)))
        name = resolve_hook_name(name)
        m = _ATTN_NAME.match(name) if isinstance(name, str) else None
        if m and int(m.group(1)) < self.cfg.n_layers and self.attn_kind(int(m.group(1))) == "cross":
            layer, point = m.groups()
            out = f"blocks.{layer}.cross_attn.{point}"
            if strict and out not in self.hook_dict:  # type: ignore[attr-defined]
                have = sorted(n.rsplit(".", 1)[1] for n in self.hook_dict  # type: ignore[attr-defined]
                              if n.startswith(f"blocks.{layer}.cross_attn."))  # fmt: skip
                raise ValueError(f"{name}: layer {layer} is a cross-attention layer, which has "
                                 f"no {point} (its attention hooks: blocks.{layer}.cross_attn."
                                 f"{{{', '.join(have)}}})")
            return out
        return name

    def add_hook(self, name: Any, hook: Any, *args: Any, **kwargs: Any) -> None:
        """As TransformerLens' ``add_hook``; TL 4's ``attn.hook_q_input`` names, and
        ``blocks.{l}.attn.hook_*`` on a cross-attention layer, accepted."""
        super().add_hook(self._resolve(name, strict=True), hook, *args,  # type: ignore[misc]
                         **kwargs)  # fmt: skip

    def _enable_hook(self, name: Any, hook: Any, dir: str) -> None:
        # the path of run_with_hooks, TL's sweeps': a linear layer's head there is NaN or refused
        name, hook = sweep_hook(self, self._resolve(name, strict=True), hook)
        super()._enable_hook(name, hook, dir)  # type: ignore[misc]

