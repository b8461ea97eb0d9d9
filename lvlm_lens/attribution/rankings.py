"""Baseline head rankings to compare head attribution with.

Each returns ``[n_examples, n_layers, n_heads]`` importance scores, larger = more important:
single-head ablation (the metric drop when only that head is ablated), attention weight from
the answer-position (or all text) queries to the source tokens, and attribution patching
(a first-order estimate of each head's ablation effect from one forward and one backward pass).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lvlm_lens.interventions.ablation import BaselineKV, head_ablation_hooks, query_scope
from lvlm_lens.interventions.engine import AblationEngine, clean_answers
from lvlm_lens.interventions.metrics import final_logits, get_metric
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput

Scores = Float[Tensor, "n_examples n_layers n_heads"]


def single_head_ablation(engine: AblationEngine, progress: bool = True) -> Scores:
    """Metric drop ``m(clean) - m(only head h ablated)`` for every head, through the engine."""
    cfg = engine.model.cfg
    n = cfg.n_layers * cfg.n_heads
    masks = torch.cat([torch.zeros(1, n, dtype=torch.bool), torch.eye(n, dtype=torch.bool)])
    out = engine.run(masks.view(-1, cfg.n_layers, cfg.n_heads), progress=progress)
    return (out[:, :1] - out[:, 1:]).view(-1, cfg.n_layers, cfg.n_heads)


@torch.no_grad()
def attention_weight(model: HookedLVLM, inp: LVLMInput, source: str = "image",
                     queries: Literal["final", "text"] = "final") -> Scores:
    """Attention mass each head puts on the source tokens, from the final or all text queries
    after the source (averaged over those queries). A cross-attention head's keys are the
    image side: its mass on an image is that on its image-side states, which the image's
    ``<|image|>`` token stands for in ``source``."""
    names = [model.attn_hook_name(i, "pattern") for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(inp, names_filter=names, return_cache_object=False)
    src = inp.groups[source].to(model.cfg.device)
    if queries == "final":
        q = inp.groups["final"].to(model.cfg.device)
    else:
        q = query_scope(inp, src, "text") & inp.groups["text"].to(model.cfg.device)
    out = []
    for layer, name in enumerate(names):
        p = cache[name]  # [b, h, q, k]; k: the image side on a cross-attention layer
        keys = image_side_keys(model, inp, src, p.shape[-1]) if model.attn_kind(layer) == "cross" \
            else src
        mass = (p * keys[:, None, None, :]).sum(-1)  # [b, h, q]
        out.append((mass * q[:, None, :]).sum(-1) / q.sum(-1, keepdim=True).clamp(min=1))
    return torch.stack(out, dim=1).float().cpu()


def image_side_keys(model: HookedLVLM, inp: LVLMInput, src: Bool[Tensor, "batch pos"],
                    n_keys: int) -> Bool[Tensor, "batch image_pos"]:
    """The image-side states (of ``n_keys``, each example's images in order, equal blocks) of
    the images whose ``<|image|>`` token is in ``src``."""
    is_image = (inp.input_ids == model.cfg.image_token_id).to(src.device)
    index = (is_image.cumsum(-1) - 1).clamp(min=0)  # each token's image number in its example
    n_max = max(max(inp.images_per_example), 1)
    chosen = torch.zeros(len(inp), n_max, dtype=torch.bool, device=src.device)
    rows, cols = (is_image & src).nonzero(as_tuple=True)
    chosen[rows, index[rows, cols]] = True
    return chosen.repeat_interleave(n_keys // n_max, dim=-1)


def attribution_patching(model: HookedLVLM, inp: LVLMInput, baseline: BaselineKV,
                         scope: str = "text", metric: str = "logit") -> Scores:
    """First-order estimate of each head's ablation effect: ``-d metric / d w_h`` at ``w = 0``,
    where ``w_h`` interpolates head ``h``'s source keys/values towards the baseline
    (attribution patching, Nanda 2023; one forward and one backward pass)."""
    cfg = model.cfg
    answers = clean_answers(model, inp)
    w = torch.zeros(len(inp), cfg.n_layers, cfg.n_heads, device=cfg.device, requires_grad=True)
    hooks = head_ablation_hooks(model, inp, w, baseline, scope)
    logits = final_logits(model.run_with_hooks(inp, fwd_hooks=hooks))
    (grad,) = torch.autograd.grad(get_metric(metric)(logits, answers).sum(), w)
    return (-grad).float().cpu()
