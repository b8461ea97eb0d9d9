"""Circuit discovery with a clean and a corrupted image: activation patching over the residual
stream, attention heads and MLPs x layer x position group, and attribution patching, its
one-forward-one-backward approximation (Nanda; Syed et al.).

Both patch *clean into corrupted*: a node's effect is how much of the clean metric comes back
when that node alone (at the positions of one token group) takes its clean value in the
corrupted run: ``restored = (m_patched - m_corrupted) / (m_clean - m_corrupted)``. Summaries
pool examples as a ratio of sums with a bootstrap CI over examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lvlm_lens.analysis.stats import bootstrap_ratio, spearman
from lvlm_lens.interventions.engine import clean_answers
from lvlm_lens.interventions.metrics import final_logits, get_metric
from lvlm_lens.interventions.patching import check_pair
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.progress import progress_bar, show_progress
from lvlm_lens.viz.plots import head_heatmap, new_figure

#: Component -> hook name suffix. ``heads`` patch one head's ``z`` (before ``W_O``).
HOOKS = {"resid": "hook_resid_pre", "heads": "attn.hook_z", "mlp": "hook_mlp_out"}
ALL = "all"


@dataclass
class PatchingConfig:
    """Options of :func:`activation_patching` and :func:`attribution_patching`.

    Attributes:
        components: Any of ``resid`` (``hook_resid_pre``), ``heads`` (each head's ``z``) and
            ``mlp`` (``hook_mlp_out``).
        groups: Position groups patched together: token-group names, or ``all`` (every
            position).
        metric: ``logit_diff`` (clean answer minus the corrupted input's answer when it has
            ``answer_ids``, else minus the best other token) or a metric name / callable.
        progress: Show a progress bar.
    """

    components: Sequence[str] = ("resid", "heads", "mlp")
    groups: Sequence[str] = (ALL, "image", "question", "final")
    metric: str | Callable[[Tensor, Tensor], Tensor] = "logit_diff"
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [c for c in self.components if c not in HOOKS]
        if bad:
            raise ValueError(f"unknown component(s) {bad}; use {sorted(HOOKS)}")


def metric_fn(model: HookedLVLM, clean: LVLMInput, corrupted: LVLMInput, metric: Any
              ) -> Callable[[Tensor], Tensor]:
    """``final logits [batch, vocab] -> [batch]`` for a clean / corrupted pair."""
    answers = clean_answers(model, clean)
    if metric == "logit_diff" and corrupted.answer_ids is not None:
        foils = corrupted.answer_ids.to(answers.device)
        if not bool((foils == answers).any()):
            return lambda logits: get_metric("logit_diff")(logits, answers, foils)
    fn = get_metric(metric)
    return lambda logits: fn(logits, answers)


def position_masks(inp: LVLMInput, groups: Sequence[str]) -> dict[str, Tensor]:
    """Bool ``[batch, pos]`` per position group (``all`` = every real position)."""
    out = {}
    for g in groups:
        if g == ALL:
            out[g] = inp.attention_mask.bool()
        elif g in inp.groups:
            out[g] = inp.groups[g].bool()
        else:
            raise KeyError(f"unknown position group {g!r}; known: {[ALL, *sorted(inp.groups)]}")
    return out


@dataclass
class PatchingResult:
    """Per-node patching effects.

    Attributes:
        frame: One row per (component, layer, head, group, example): ``delta`` (patched minus
            corrupted metric), ``total`` (clean minus corrupted) and ``restored``
            (``delta / total``). ``head`` is -1 for ``resid`` and ``mlp``; ``kind`` is the
            head's kind (``self``, ``cross`` or ``linear``; None for ``resid`` and ``mlp``).
        clean: Clean metric per example.
        corrupted: Corrupted metric per example.
        method: ``exact`` (activation patching) or ``attribution`` (first-order estimate).
        seed: Seed of the bootstrap intervals of :meth:`summary`.
    """

    frame: pd.DataFrame
    clean: np.ndarray
    corrupted: np.ndarray
    method: str
    seed: int = field(default=0, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """The tidy per-example table."""
        return self.frame

    def _wide(self) -> tuple[pd.DataFrame, np.ndarray]:
        keys = ["component", "layer", "head", "group"]
        wide = self.frame.pivot_table(index=keys, columns="example", values="delta",
                                      sort=False)
        return wide, wide.to_numpy()

    def summary(self) -> pd.DataFrame:
        """Per node: share of the clean-vs-corrupted gap restored (ratio of sums over
        examples) with a bootstrap 95 % CI over examples."""
        wide, d = self._wide()
        total = self.clean - self.corrupted
        value, low, high = bootstrap_ratio(d, total, seed=self.seed)
        out = wide.index.to_frame(index=False)
        return out.assign(restored=value, low=low, high=high)

    def grid(self, component: str, group: str = ALL) -> np.ndarray:
        """``[n_layers, n_heads]`` (heads) or ``[n_layers, n_groups]`` (resid, mlp) of
        ``restored``."""
        s = self.summary()
        s = s[s.component == component]
        if component == "heads":
            s = s[s.group == group]
            return s.pivot(index="layer", columns="head", values="restored").to_numpy()
        return s.pivot(index="layer", columns="group", values="restored")[
            list(dict.fromkeys(s.group))].to_numpy()

    def plot(self, head_group: str = ALL) -> Any:
        """Heatmaps: layer x group for ``resid`` / ``mlp``, layer x head for ``heads`` (at
        ``head_group`` positions)."""
        comps = list(dict.fromkeys(self.frame.component))
        fig, axes = new_figure(len(comps), 1, (3.6, 3.0))
        groups = list(dict.fromkeys(self.frame.group))
        for ax, comp in zip(axes[0], comps, strict=True):
            if comp == "heads":
                head_heatmap(self.grid(comp, head_group), ax=ax, label="restored",
                             title=f"heads ({head_group} positions)", signed=True)
            else:
                head_heatmap(self.grid(comp), ax=ax, label="restored", title=comp, signed=True,
                             xlabels=groups, xlabel="positions")
        fig.suptitle(f"{self.method} patching: share of the clean metric restored")
        return fig

    def agreement(self, other: PatchingResult, n_boot: int = 1000) -> pd.DataFrame:
        """Spearman rank correlation of the node effects of two results (e.g. attribution vs
        exact patching) per component, with a bootstrap CI over examples."""
        a, da = self._wide()
        b, db = other._wide()
        db = b.reindex(a.index).to_numpy()
        rows = []
        rng = np.random.default_rng(self.seed)
        n = da.shape[1]
        idx = rng.integers(0, n, size=(n_boot, n))
        for comp in dict.fromkeys(a.index.get_level_values("component")):
            sel = np.asarray(a.index.get_level_values("component") == comp)
            x, y = da[sel], db[sel]
            value = spearman(x.mean(1), y.mean(1))
            boots = [spearman(x[:, i].mean(1), y[:, i].mean(1)) for i in idx] if n > 1 else [value]
            lo, hi = np.nanquantile(boots, [0.025, 0.975])
            rows.append({"component": comp, "spearman": value, "low": lo, "high": hi,
                         "nodes": int(sel.sum()), "n": n})
        return pd.DataFrame(rows)


def _nodes(model: HookedLVLM, components: Sequence[str]) -> list[tuple[str, int, int]]:
    out = []
    for comp in components:
        for layer in range(model.cfg.n_layers):
            heads = range(model.cfg.n_heads) if comp == "heads" else [-1]
            out += [(comp, layer, h) for h in heads]
    return out


def _hook_name(model: HookedLVLM, comp: str, layer: int) -> str:
    if comp == "heads":  # a cross-attention layer's heads are cross_attn.hook_z
        return model.attn_hook_name(layer, "z")
    return f"blocks.{layer}.{HOOKS[comp]}"


def _rows(model: HookedLVLM, nodes_values: list[tuple[tuple[str, int, int], str, Tensor]],
          total: np.ndarray) -> pd.DataFrame:
    rows = []
    for (comp, layer, head), group, delta in nodes_values:
        kind = model.attn_kind(layer) if comp == "heads" else None
        for i, d in enumerate(delta.tolist()):
            rows.append({"component": comp, "layer": layer, "head": head, "kind": kind,
                         "group": group, "example": i, "delta": d, "total": float(total[i]),
                         "restored": d / total[i] if total[i] != 0 else np.nan})
    return pd.DataFrame(rows)


@torch.no_grad()
def activation_patching(model: HookedLVLM, clean: LVLMInput, corrupted: LVLMInput,
                        config: PatchingConfig | None = None) -> PatchingResult:
    """Patch each node's clean activation into the corrupted run, one node and group at a time.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        clean: The clean input (e.g. the object's image).
        corrupted: The same prompt with another image (same shape).
        config: Components, position groups, metric (default :class:`PatchingConfig`).
    """
    config = config or PatchingConfig()
    check_pair(clean, corrupted)
    fn = metric_fn(model, clean, corrupted, config.metric)
    names = {_hook_name(model, c, layer) for c in config.components
             for layer in range(model.cfg.n_layers)}
    logits, cache = model.run_with_cache(clean, names_filter=lambda n: n in names,
                                         return_cache_object=False)
    m_clean = fn(final_logits(logits)).float().cpu()
    m_corr = fn(final_logits(model(corrupted))).float().cpu()
    masks = {g: m.to(model.cfg.device) for g, m in position_masks(corrupted, config.groups).items()}
    plan = [(node, g) for node in _nodes(model, config.components) for g in config.groups]
    out = []
    with show_progress(config.progress):
        for (comp, layer, head), g in progress_bar(plan, desc="activation patching"):
            name = _hook_name(model, comp, layer)
            src, where = cache[name], masks[g]

            def hook(t: Tensor, hook: Any, src=src, where=where, head=head) -> Tensor:
                if head < 0:
                    return torch.where(where[..., None], src, t)
                t = t.clone()
                t[:, :, head] = torch.where(where[..., None], src[:, :, head], t[:, :, head])
                return t

            patched = fn(final_logits(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])))
            out.append(((comp, layer, head), g, patched.float().cpu() - m_corr))
    total = (m_clean - m_corr).numpy()
    return PatchingResult(_rows(model, out, total), m_clean.numpy(), m_corr.numpy(), "exact")


def attribution_patching(model: HookedLVLM, clean: LVLMInput, corrupted: LVLMInput,
                         config: PatchingConfig | None = None) -> PatchingResult:
    """First-order estimate of :func:`activation_patching`: one forward and one backward pass.

    ``delta ≈ Σ_{positions in group} (a_clean - a_corrupted) · ∂m/∂a`` with the gradient taken
    in the corrupted run, for every node at once. Exact in the limit of a small difference
    between the clean and the corrupted activations.
    """
    config = config or PatchingConfig()
    check_pair(clean, corrupted)
    fn = metric_fn(model, clean, corrupted, config.metric)
    comps = list(config.components)
    names = [_hook_name(model, c, layer) for c in comps for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(clean, names_filter=lambda n: n in names,
                                             return_cache_object=False)
        m_clean = fn(final_logits(logits)).float().cpu()
    acts: dict[str, Tensor] = {}
    probes: dict[str, Tensor] = {}

    def probe(t: Tensor, hook: Any) -> Tensor:
        z = torch.zeros_like(t, requires_grad=True)
        probes[hook.name], acts[hook.name] = z, t.detach()
        return t + z

    with torch.enable_grad():
        logits = model.run_with_hooks(corrupted, fwd_hooks=[(n, probe) for n in set(names)])
        metric = fn(final_logits(logits))
        order = list(probes)
        grads = torch.autograd.grad(metric.sum(), [probes[n] for n in order])
    grad = dict(zip(order, grads, strict=True))
    m_corr = metric.detach().float().cpu()
    masks = {g: m.to(model.cfg.device) for g, m in position_masks(corrupted, config.groups).items()}
    out = []
    for comp, layer, head in _nodes(model, comps):
        name = _hook_name(model, comp, layer)
        prod = (cache[name] - acts[name]) * grad[name]  # [b, pos, d] or [b, pos, h, d]
        prod = prod[:, :, head] if head >= 0 else prod
        per_pos = prod.sum(-1)  # [b, pos]
        for g in config.groups:
            out.append(((comp, layer, head), g,
                        (per_pos * masks[g]).sum(-1).detach().float().cpu()))
    total = (m_clean - m_corr).numpy()
    return PatchingResult(_rows(model, out, total), m_clean.numpy(), m_corr.numpy(),
                          "attribution")
