"""The measurements behind ``docs/claims.md``: one function per claim of the paper that the
attribution and comparison code (:mod:`lvlm_lens.attribution`) does not already measure.

- :func:`single_head_spread`: do single-head effects add up to the all-heads effect, or does
  the model spread the transfer over heads and compensate?
- :func:`rank_agreement`: per-example Spearman correlation of two head rankings (e.g. attention
  weight vs head attribution).
- :func:`semantic_vs_appearance`: are attribution vectors more alike within a class than within
  an appearance? (centred cosine, permutation test).
- :func:`flow_sweep`: attention knockout of token-group edges over sliding layer windows.
- :func:`object_vs_background`: ablation of object vs as many background image tokens.

Every headline number comes with a seeded bootstrap CI over examples
(:func:`~lvlm_lens.attribution.evaluation.bootstrap_mean_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lvlm_lens.attribution.evaluation import bootstrap_mean_ci
from lvlm_lens.interventions.knockout import knockout_effect, window_layers
from lvlm_lens.interventions.metrics import answer_prob
from lvlm_lens.interventions.token_ablation import ablate_image_tokens
from lvlm_lens.model.inputs import LVLMInput


def mean_ci(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    """``{"mean", "ci_low", "ci_high", "n"}`` of finite values (bootstrap 95 % CI)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    low, high = bootstrap_mean_ci(x, seed=seed)
    return {"mean": float(x.mean()) if len(x) else math.nan, "ci_low": low, "ci_high": high,
            "n": int(len(x))}  # fmt: skip


def single_head_spread(
    single: Float[Tensor, "n n_layers n_heads"], all_heads_effect: Float[Tensor, " n"]
) -> dict[str, Any]:
    """How much of the all-heads effect single-head ablations see.

    Args:
        single: Per-example single-head effects ``m(clean) - m(head h ablated)``.
        all_heads_effect: ``m(clean) - m(every head ablated)`` of the same examples.

    Returns:
        ``sum_ratio``: per-example ``sum_h single_h / all-heads effect`` (1 if effects add up;
        far below 1 if heads compensate for each other), ``max_ratio``: the largest single
        effect over the all-heads effect; both as mean with CI.
    """
    total = all_heads_effect.double()
    sums = single.double().flatten(1).sum(1) / total
    maxes = single.double().flatten(1).max(1).values / total
    return {"sum_ratio": mean_ci(sums.tolist()), "max_ratio": mean_ci(maxes.tolist())}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    import pandas as pd

    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def rank_agreement(
    a: Float[Tensor, "n n_layers n_heads"], b: Float[Tensor, "n n_layers n_heads"]
) -> dict[str, Any]:
    """Per-example Spearman correlation between two head rankings (mean with CI)."""
    if a.shape != b.shape:
        raise ValueError(f"rankings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    rho = [_spearman(x.flatten().numpy(), y.flatten().numpy()) for x, y in zip(a, b, strict=True)]
    return mean_ci(rho) | {"per_example": rho}


@dataclass
class SemanticsResult:
    """Similarity of per-example attribution vectors by pair type.

    Attributes:
        same_class: Centred cosine of pairs with the same class and different appearance.
        same_appearance: Pairs with the same appearance and a different class.
        different: Pairs that differ in both.
        difference: ``mean(same_class) - mean(same_appearance)``.
        p_value: Share of class-label permutations with a difference at least as large.
        n_perm: Permutations.
    """

    same_class: list[float]
    same_appearance: list[float]
    different: list[float]
    difference: float
    p_value: float
    n_perm: int

    def summary(self) -> dict[str, Any]:
        """Mean of each pair type, the difference and the permutation p-value."""
        avg = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
        return {
            "same_class": avg(self.same_class),
            "same_appearance": avg(self.same_appearance),
            "different": avg(self.different),
            "difference": self.difference,
            "p_value": self.p_value,
            "n_pairs": [len(self.same_class), len(self.same_appearance), len(self.different)],
        }


def _pair_means(sim: np.ndarray, classes: np.ndarray, looks: np.ndarray):
    iu = np.triu_indices(len(classes), 1)
    same_c = classes[iu[0]] == classes[iu[1]]
    same_a = looks[iu[0]] == looks[iu[1]]
    s = sim[iu]
    return s[same_c & ~same_a], s[~same_c & same_a], s[~same_c & ~same_a]


def semantic_vs_appearance(
    importance: Float[Tensor, "n n_layers n_heads"],
    classes: Sequence[str],
    appearances: Sequence[str],
    n_perm: int = 2000,
    seed: int = 0,
) -> SemanticsResult:
    """Are head-attribution vectors more alike within a class than within an appearance?

    Vectors are centred (the mean over examples removed, so a head every example uses does not
    make all pairs alike), then compared by cosine. The p-value permutes the class labels.

    Args:
        importance: Per-example head importance.
        classes: Class of each example; ``appearances`` a label of its look (e.g. colour +
            background), so that each class is seen in several looks and each look in
            several classes.
        n_perm: Permutations of the class labels.
        seed: Seed of the permutations.
    """
    x = importance.double().flatten(1).numpy()
    x = x - x.mean(0, keepdims=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    sim = x @ x.T
    c, a = np.asarray(classes), np.asarray(appearances)
    same_c, same_a, diff = _pair_means(sim, c, a)
    if not len(same_c) or not len(same_a):
        raise ValueError("need pairs of the same class (other look) and of the same look")
    observed = same_c.mean() - same_a.mean()
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        pc, pa, _ = _pair_means(sim, rng.permutation(c), a)
        if len(pc) and len(pa) and pc.mean() - pa.mean() >= observed:
            hits += 1
    return SemanticsResult(
        same_c.tolist(), same_a.tolist(), diff.tolist(), float(observed),
        (hits + 1) / (n_perm + 1), n_perm,
    )  # fmt: skip


#: Token-group edges (source keys -> target queries) swept by :func:`flow_sweep`.
FLOW_EDGES = (
    ("question", "final"),
    ("question", "role"),
    ("image", "final"),
    ("image", "role"),
    ("image", "question"),
    ("role", "final"),
)


def flow_sweep(
    model: Any,
    inputs: list[LVLMInput],
    window: int,
    edges: Sequence[tuple[str, str]] = FLOW_EDGES,
    labels: Sequence[str] | None = None,
) -> Any:
    """Relative change of the answer probability when an edge is knocked out in a window.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        inputs: Examples with answers (any batch size each).
        window: Layers per window (centred, clipped at the ends: :func:`window_layers`).
        edges: ``(source, target)`` token groups.
        labels: Optional label of each input (e.g. the attribute asked), copied to the rows.

    Returns:
        A DataFrame: ``edge``, ``centre``, ``input``, ``label``, ``effect`` (mean over the
        input's examples), ``flipped`` (share of examples whose argmax answer changes).
    """
    import pandas as pd

    rows = []
    n = model.cfg.n_layers
    for j, inp in enumerate(inputs):
        answers = inp.answer_ids.to(model.cfg.device)
        for source, target in edges:
            for centre in range(n):
                layers = window_layers(centre, window, n)
                effect = knockout_effect(model, inp, source, target, layers)
                flipped = _knockout_flips(model, inp, source, target, layers, answers)
                rows.append({"edge": f"{source}->{target}", "centre": centre, "input": j,
                             "label": labels[j] if labels else "", "effect": float(effect.mean()),
                             "flipped": flipped})  # fmt: skip
    return pd.DataFrame(rows)


@torch.no_grad()
def _knockout_flips(model, inp, source, target, layers, answers) -> float:
    from lvlm_lens.interventions.knockout import knockout_hooks

    logits = model.run_with_hooks(inp, fwd_hooks=knockout_hooks(model, inp, source, target, layers))
    return float((logits[:, -1].argmax(-1) != answers).float().mean())


def first_window(frame: Any, edge: str, share: float = 0.5) -> int | None:
    """Earliest window centre where an edge's mean effect reaches ``share`` of its largest
    (effects are negative: a knockout lowers the answer probability)."""
    curve = frame[frame.edge == edge].groupby("centre").effect.mean()
    peak = -curve.min()
    if not peak > 0:
        return None
    return int(curve.index[(-curve >= share * peak).to_numpy()].min())


@torch.no_grad()
def object_vs_background(
    model: Any,
    inputs: list[LVLMInput],
    object_tokens: list[Bool[Tensor, " n_image_tokens"]],
    baseline: Float[Tensor, " d_model"],
    seed: int = 0,
) -> Any:
    """Answer probability when the object's image tokens, or as many background ones, are
    replaced by ``baseline`` (e.g. the mean image token).

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        inputs: One-example inputs with answers.
        object_tokens: Per input, a flat bool mask over its image tokens (True = object).
        baseline: The replacement image token.
        seed: Seed of the background subset (as many tokens as the object has, or all
            background tokens if there are fewer).

    Returns:
        A DataFrame, one row per input: ``clean_prob``, ``object_prob``, ``background_prob``
        (answer probabilities), ``n_object``, ``n_background``, and whether the answer
        survives each ablation (``object_correct``, ``background_correct``).
    """
    import pandas as pd

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for inp, obj in zip(inputs, object_tokens, strict=True):
        obj = obj.bool().cpu()
        bg_idx = (~obj).nonzero().flatten()
        pick = bg_idx[torch.randperm(len(bg_idx), generator=gen)[: int(obj.sum())]]
        bg = torch.zeros_like(obj)
        bg[pick] = True
        answers = inp.answer_ids.to(model.cfg.device)
        clean = model(inp)[:, -1]
        row = {"clean_prob": float(answer_prob(clean, answers)[0])}
        for name, mask in (("object", obj), ("background", bg)):
            logits = ablate_image_tokens(model, inp, mask, baseline)[:, -1]
            row[f"{name}_prob"] = float(answer_prob(logits, answers)[0])
            row[f"{name}_correct"] = bool(logits.argmax(-1)[0] == answers[0])
            row[f"n_{name}"] = int(mask.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def plot_flow(frame: Any) -> Any:
    """One line per edge: mean relative change of the answer probability per window centre."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.subplots()
    curves = frame.groupby(["edge", "centre"]).effect.mean().unstack()
    for edge, row in curves.iterrows():
        ax.plot(row.index, 100 * row.to_numpy(), marker="o", label=edge)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("window centre (layer)")
    ax.set_ylabel("answer probability change (%)")
    ax.legend(fontsize=7)
    return fig
