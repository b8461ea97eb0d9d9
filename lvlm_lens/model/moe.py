"""The sparse mixture-of-experts MLP (Qwen3-VL-MoE, Qwen3.5-MoE, Llama 4), with
TransformerLens-named routing hooks.

Hooks of ``blocks.{l}.mlp`` on a sparse layer:

- ``hook_router_logits`` ``[batch, pos, expert]``: the router's logits (TransformerLens 4's
  bridge fires them on ``mlp.gate.hook_out``).
- ``hook_expert_weights`` ``[batch, pos, expert]``: the routing probabilities over every expert,
  before the top-k choice, as HookedTransformer's MoE (softmax; Llama 4: the sigmoid of each
  logit); an edit re-routes the token.
- ``hook_expert_indices`` ``[batch, pos, top_k]``: the chosen experts, most probable first, as
  HookedTransformer's; an edit sends the token to other experts (with their probabilities).
- ``hook_expert_out`` ``[batch, pos, top_k, d_model]``: each chosen expert's output times its
  routing weight (Llama 4: its output on the input times that weight), in the order of
  ``hook_expert_indices``; they sum to the MLP's output (plus the shared expert's, where there
  is one).
- With a shared expert (Qwen3.5-MoE, Llama 4): ``hook_shared_out`` ``[batch, pos, d_model]``,
  its (gated) output, and where it is gated (Qwen3.5-MoE) ``hook_shared_gate`` ``[batch, pos,
  1]``, its gate's logit (before the sigmoid).

The weights stay the HF modules' own (router ``[expert, d_model]``, fused gate/up
``[expert, 2 * d_expert, d_model]``, down ``[expert, d_model, d_expert]``, or the transposes
where ``experts_transposed``); ``W_gate``, ``W_in`` and ``W_out`` are TransformerLens-shaped
views per expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lvlm_lens.model.config import MoESpec
from lvlm_lens.model.rotary import l2_norm

__all__ = ["SparseMoE"]


class SparseMoE(nn.Module):
    """A linear router, softmax (or sigmoid: GLM-4.5V's with a choice bias and group-limited
    choice, Llama 4's) scores, top-k routing and gated-MLP experts (HF's
    ``Qwen3VLMoeTextSparseMoeBlock``, ``Glm4vMoeTextMoE``, ``Llama4TextMoe``), computed expert by
    expert on the tokens routed to it."""

    def __init__(self, spec: MoESpec, hf_mlp: nn.Module):
        super().__init__()
        self.spec = spec
        # weight [expert, d_model] (Llama 4 names it router)
        self.router = hf_mlp.gate if hasattr(hf_mlp, "gate") else hf_mlp.router
        # Gemma 4: a router module around its linear (with a scale and per-expert scales)
        self.router_linear = getattr(self.router, "proj", self.router)
        self.experts = hf_mlp.experts  # gate_up_proj, down_proj, act_fn
        for name in ("router_logits", "expert_weights", "expert_indices", "expert_out"):
            setattr(self, f"hook_{name}", HookPoint())
        if spec.shared_expert:
            # gate_proj, up_proj, down_proj, act_fn
            self.shared_expert = getattr(hf_mlp, spec.shared_module)
            if spec.shared_gated:
                self.shared_expert_gate = hf_mlp.shared_expert_gate  # weight [1, d_model]
                self.hook_shared_gate = HookPoint()
            self.hook_shared_out = HookPoint()

    def _gate_up(self) -> Float[Tensor, "expert two_d_expert d_model"]:
        w = self.experts.gate_up_proj
        return w.transpose(1, 2) if self.spec.experts_transposed else w

    def _down(self) -> Float[Tensor, "expert d_model d_expert"]:
        w = self.experts.down_proj
        return w.transpose(1, 2) if self.spec.experts_transposed else w

    @property
    def W_router(self) -> Float[Tensor, "d_model expert"]:
        """The router's weight (logits are ``x @ W_router``)."""
        return self.router_linear.weight.T

    @property
    def W_gate(self) -> Float[Tensor, "expert d_model d_expert"]:
        """Each expert's gate projection."""
        return self._gate_up()[:, : self.spec.d_expert].transpose(1, 2)

    @property
    def W_in(self) -> Float[Tensor, "expert d_model d_expert"]:
        """Each expert's up (linear) projection."""
        return self._gate_up()[:, self.spec.d_expert :].transpose(1, 2)

    @property
    def W_out(self) -> Float[Tensor, "expert d_expert d_model"]:
        """Each expert's down projection."""
        return self._down().transpose(1, 2)

    @property
    def b_in(self) -> Float[Tensor, "expert d_expert"]:
        """Zeros: the experts have no biases."""
        return self.experts.down_proj.new_zeros(self.spec.n_experts, self.spec.d_expert)

    @property
    def b_out(self) -> Float[Tensor, " d_model"]:
        """Zeros: the experts have no biases."""
        return self.experts.down_proj.new_zeros(self._down().shape[1])

    def route(
        self, x: Float[Tensor, "batch pos d_model"]
    ) -> tuple[Tensor, Tensor]:
        """The chosen experts ``[batch, pos, top_k]`` and their weights (in ``x``'s dtype)."""
        spec, weight = self.spec, self.router_linear.weight
        if spec.router_norm:  # Gemma 4: weightless RMSNorm, the router's scale, d ** -0.5
            x = l2_norm(x, self.router.eps) * self.router.scale * self.router.scalar_root_size
        if spec.router_fp32:  # GLM-4.5V: fp32 logits, as HF
            logits = F.linear(x.float(), weight.float())
        else:
            logits = F.linear(x, weight)
        logits = self.hook_router_logits(logits)
        sigmoid = spec.scoring == "sigmoid"
        probs = self.hook_expert_weights(
            torch.sigmoid(logits.float()) if sigmoid
            else F.softmax(logits, dim=-1, dtype=torch.float32))  # fmt: skip
        plain = sigmoid and not spec.choice_bias and spec.n_group <= 1
        # Llama 4 ranks the logits themselves (no ties where the sigmoid saturates)
        ranked = logits if plain else self.choice_scores(probs)
        index = self.hook_expert_indices(torch.topk(ranked, spec.top_k, dim=-1).indices)
        weight = probs.gather(-1, index)  # the top-k values, or those of edited indices
        if spec.renormalize:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        if spec.routed_scaling != 1.0:
            weight = weight * spec.routed_scaling
        if spec.per_expert_scale:  # Gemma 4
            weight = weight * self.router.per_expert_scale[index]
        return index, weight.to(x.dtype)

    def choice_scores(self, probs: Float[Tensor, "batch pos expert"]) -> Tensor:
        """The scores the top-k choice ranks: the probabilities, plus the router's correction
        bias (``choice_bias``), ``-inf`` outside the ``topk_group`` best groups (``n_group``)."""
        spec = self.spec
        scores = probs + self.router.e_score_correction_bias if spec.choice_bias else probs
        if spec.n_group <= 1:
            return scores
        groups = scores.unflatten(-1, (spec.n_group, -1))
        best = groups.topk(2, dim=-1).values.sum(-1).topk(spec.topk_group, dim=-1).indices
        keep = torch.zeros_like(groups[..., 0], dtype=torch.bool).scatter_(-1, best, True)
        return groups.masked_fill(~keep[..., None], float("-inf")).flatten(-2)

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], router_in: Tensor | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """Route every token (on ``router_in``, default ``x``: Gemma 4's router reads the MLP's
        input before its norm) and sum its experts' weighted outputs on ``x``."""
        b, s, d = x.shape
        index, weight = self.route(x if router_in is None else router_in)
        flat, k = x.reshape(-1, d), index.shape[-1]
        slots_of = index.reshape(-1, k)
        w = weight.reshape(-1, k)
        out = x.new_zeros(b * s, k, d)
        gate_up, down = self._gate_up(), self._down()
        on_input = self.spec.weight_input  # Llama 4: the weight scales the expert's input
        for e in torch.unique(slots_of).tolist():
            rows, slots = torch.where(slots_of == e)
            xe = flat[rows] * w[rows, slots, None] if on_input else flat[rows]
            gate, up = F.linear(xe, gate_up[e]).chunk(2, dim=-1)
            y = F.linear(self.experts.act_fn(gate) * up, down[e])
            out[rows, slots] = y if on_input else y * w[rows, slots, None]
        per_expert = self.hook_expert_out(out.view(b, s, k, d))
        # summed in increasing expert order, the order HF accumulates them in
        order = index.argsort(dim=-1, stable=True)[..., None].expand(-1, -1, -1, d)
        ordered = per_expert.gather(2, order)
        total = ordered[:, :, 0]
        for j in range(1, k):
            total = total + ordered[:, :, j]
        if self.spec.shared_expert:
            total = total + self.shared(x)
        return total

    def shared(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """The shared expert's gated MLP output, scaled by its sigmoid gate where it has one."""
        mlp = self.shared_expert
        act = mlp.act_fn if hasattr(mlp, "act_fn") else mlp.activation_fn  # Llama 4's name
        h = mlp.down_proj(act(mlp.gate_proj(x)) * mlp.up_proj(x))
        if not self.spec.shared_gated:
            return self.hook_shared_out(h)
        gate = self.hook_shared_gate(self.shared_expert_gate(x))
        return self.hook_shared_out(torch.sigmoid(gate) * h)
