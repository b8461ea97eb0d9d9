"""Claim-by-claim comparison of head rankings: paired statistics per example, heads needed,
where the important heads sit, and how much single heads see of the all-heads effect.

:func:`~lvlm_lens.analysis.faithfulness.ranking_curves` evaluates each example's own ranking
on that example. :func:`paired_comparison` turns those curves into one score per example and
method (the mean of a curve over ``0 < k <= fraction * n_heads``, for ``fraction`` 10 % and
25 %) and compares the reference method (head attribution) with each other one, example by
example: wins / losses / ties, the mean difference with a seeded bootstrap CI, and a
two-sided sign test. A pooled comparison can hide a difference that is consistent over
examples (and the other way round), so both are reported.

Examples whose all-heads effect is near zero
(:func:`~lvlm_lens.interventions.baseline_check.check_baseline`) cannot be normalised: leave
them out before computing the curves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from lvlm_lens.analysis.faithfulness import CurvesResult
from lvlm_lens.analysis.stats import Estimate, bootstrap_ci, sign_test
from lvlm_lens.attribution.comparison import HEAD_ATTRIBUTION
from lvlm_lens.viz.plots import bar_plot, new_figure

CURVES = ("faithfulness", "completeness")
FRACTIONS = (0.1, 0.25)


def per_example_curves(curves: CurvesResult) -> pd.DataFrame:
    """Each example's own normalised curves: ``ranking``, ``example``, ``k``,
    ``faithfulness = (f - ablated) / (clean - ablated)``, ``completeness = (clean - g) /
    (clean - ablated)``."""
    p = curves.per_example
    span = p.clean - p.ablated
    return p.assign(faithfulness=(p.f - p.ablated) / span, completeness=(p.clean - p.g) / span)[
        ["ranking", "example", "k", "faithfulness", "completeness"]
    ]


@dataclass
class PairedComparison:
    """Per-example scores of several rankings and their paired comparison.

    Attributes:
        scores: One row per (ranking, example, curve, fraction): ``score``, the mean of the
            curve over ``0 < k <= fraction * n_heads``.
        paired: One row per (curve, fraction, other ranking): ``wins`` / ``losses`` /
            ``ties`` of the reference, ``mean_diff`` (reference - other) with its bootstrap
            ``low`` / ``high``, ``sign_p`` (two-sided sign test), ``n`` and the pooled
            (ratio-of-sums) scores ``pooled_reference`` / ``pooled_other``.
        heads: One row per (ranking, curve): heads needed to reach ``threshold`` (median over
            examples, an example that never does counts ``n_heads + 1``), ``n_reached`` and
            the pooled curve's value (``pooled_heads``).
        reference: The ranking the others are compared with.
        n_heads: Heads in the model.
    """

    scores: pd.DataFrame
    paired: pd.DataFrame
    heads: pd.DataFrame
    reference: str
    n_heads: int

    def to_frame(self) -> pd.DataFrame:
        """The paired statistics."""
        return self.paired

    def plot(self, fraction: float = 0.1) -> Any:
        """Per-example differences (reference - other) at ``fraction``, one panel per curve:
        dots are examples, squares the mean with its 95 % CI, with wins / losses / ties."""
        fig, axes = new_figure(n_cols=len(CURVES), size=(4.5, 3.4), sharey=True)
        for ax, curve in zip(axes[0], CURVES, strict=True):
            part = self.scores[(self.scores.curve == curve) & (self.scores.fraction == fraction)]
            wide = part.pivot(index="example", columns="ranking", values="score")
            stats = self.paired[(self.paired.curve == curve) & (self.paired.fraction == fraction)]
            for j, row in enumerate(stats.itertuples()):
                diff = (wide[self.reference] - wide[row.other]).to_numpy()
                ax.scatter(j + np.linspace(-0.15, 0.15, len(diff)), diff, s=10, alpha=0.6)
                err = [[row.mean_diff - row.low], [row.high - row.mean_diff]]
                ax.errorbar(j, row.mean_diff, err, fmt="s", color="black", capsize=3)
                ax.annotate(f"{row.wins}/{row.losses}/{row.ties}", (j, 1.0), ha="center",
                            xycoords=("data", "axes fraction"), fontsize=7)  # fmt: skip
            ax.axhline(0, color="gray", lw=0.8)
            ax.set_xticks(range(len(stats)), list(stats.other), rotation=20, ha="right")
            ax.set_title(f"{curve}, k <= {fraction:.0%} of heads", fontsize=9)
        axes[0, 0].set_ylabel(f"{self.reference} - other, per example")
        return fig


def _early(frame: pd.DataFrame, curve: str, fraction: float, n_heads: int) -> pd.Series:
    keep = (frame.k > 0) & (frame.k <= max(1, int(fraction * n_heads)))
    return frame[keep].groupby(["ranking", "example"], sort=False)[curve].mean()


def paired_comparison(
    curves: CurvesResult,
    reference: str = HEAD_ATTRIBUTION,
    *,
    threshold: float = 0.8,
    tie_tol: float = 1e-6,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedComparison:
    """Compare ``reference`` with every other ranking of ``curves``, example by example.

    Args:
        curves: :func:`~lvlm_lens.analysis.faithfulness.ranking_curves` of per-example
            rankings (one engine per example); the more ``k`` evaluated, the finer the scores.
        reference: The ranking compared with the others.
        threshold: Curve value for the heads-needed table (``PairedComparison.heads``).
        tie_tol: Score differences at most this large are ties.
        n_boot: Bootstrap resamples (examples) of the mean difference.
        seed: Seed of the bootstrap.
    """
    n = curves.n_heads
    per = per_example_curves(curves)
    if reference not in set(per.ranking):
        raise ValueError(f"no ranking {reference!r}; have {sorted(set(per.ranking))}")
    pooled = curves.frame
    score_rows, paired_rows = [], []
    for curve in CURVES:
        for fraction in FRACTIONS:
            early = _early(per, curve, fraction, n)
            top = max(1, int(fraction * n))
            keep = (pooled.curve == curve) & (pooled.k > 0) & (pooled.k <= top)
            pooled_score = pooled[keep].groupby("ranking", sort=False)["mean"].mean()
            for (ranking, example), v in early.items():
                score_rows.append({"ranking": ranking, "example": example, "curve": curve,
                                   "fraction": fraction, "score": float(v)})  # fmt: skip
            ref = early.loc[reference]
            for other in early.index.get_level_values(0).unique():
                if other == reference:
                    continue
                diff = (ref - early.loc[other]).dropna().to_numpy()
                wins, losses = int((diff > tie_tol).sum()), int((diff < -tie_tol).sum())
                est: Estimate = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
                paired_rows.append({
                    "curve": curve, "fraction": fraction, "reference": reference,
                    "other": other, "n": len(diff), "wins": wins, "losses": losses,
                    "ties": len(diff) - wins - losses, "mean_diff": est.value, "low": est.low,
                    "high": est.high, "sign_p": sign_test(wins, losses),
                    "pooled_reference": float(pooled_score[reference]),
                    "pooled_other": float(pooled_score[other]),
                })  # fmt: skip
    heads_rows = []
    for curve in CURVES:
        pooled_need = curves.heads_needed(threshold, curve)
        for ranking, part in per.groupby("ranking", sort=False):
            need = part[part[curve] >= threshold].groupby("example").k.min()
            filled = need.reindex(part.example.unique()).fillna(n + 1)
            heads_rows.append({
                "ranking": ranking, "curve": curve, "threshold": threshold,
                "median_heads": float(filled.median()), "n_reached": int(need.notna().sum()),
                "n": len(filled), "pooled_heads": pooled_need.get(ranking),
            })  # fmt: skip
    return PairedComparison(pd.DataFrame(score_rows), pd.DataFrame(paired_rows),
                            pd.DataFrame(heads_rows), reference, n)  # fmt: skip


@dataclass
class LayerDistribution:
    """Where the top heads of a ranking sit.

    Attributes:
        counts: ``[n_layers]`` top heads per layer, summed over examples (per-example
            rankings) or of the single ranking.
        later_half: Share of the top heads in layers ``>= n_layers // 2``, with a bootstrap CI
            over examples (the CI is the value itself for one ranking).
        k: Top heads taken per ranking.
        per_example_later_half: That share per example.
    """

    counts: np.ndarray
    later_half: Estimate
    k: int
    per_example_later_half: list[float] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: number and share of the top heads."""
        total = max(1, int(self.counts.sum()))
        return pd.DataFrame({"layer": range(len(self.counts)),
                             "top_heads": self.counts.astype(int),
                             "share": self.counts / total})  # fmt: skip

    def plot(self) -> Any:
        """Bars of the share of top heads per layer."""
        frame = self.to_frame().assign(layer=lambda f: f.layer.astype(str))
        return bar_plot(frame, "layer", "share", low=None, high=None,
                        ylabel=f"share of the top {self.k} heads",
                        title=f"later half: {self.later_half.format('.0%')}")  # fmt: skip


def layer_distribution(
    ranking: Float[Tensor, "... n_layers n_heads"],
    fraction: float = 0.1,
    n_boot: int = 2000,
    seed: int = 0,
) -> LayerDistribution:
    """Layers of the top ``fraction`` heads of one ranking or of each example's ranking.

    Args:
        ranking: ``[n_layers, n_heads]`` or per example ``[n_examples, n_layers, n_heads]``
            (higher = more important).
        fraction: Share of all heads taken as "top" (at least one).
        n_boot: Bootstrap resamples of the examples for the CI of the later-half share.
        seed: Seed of the bootstrap.
    """
    r = torch.as_tensor(ranking).float()
    r = r[None] if r.ndim == 2 else r
    if r.ndim != 3:
        raise ValueError(f"ranking must be [n_layers, n_heads] or [n, n_layers, n_heads], "
                         f"got {tuple(r.shape)}")  # fmt: skip
    n, n_layers, n_heads = r.shape
    k = max(1, int(fraction * n_layers * n_heads))
    layer = torch.topk(r.reshape(n, -1), k, dim=1).indices // n_heads
    counts = torch.bincount(layer.flatten(), minlength=n_layers).numpy()
    later = (layer >= n_layers // 2).float().mean(1).numpy()
    return LayerDistribution(counts, bootstrap_ci(later, n_boot=n_boot, seed=seed), k,
                             later.tolist())  # fmt: skip


def single_head_spread(
    single: Float[Tensor, "n n_layers n_heads"],
    all_heads_effect: Float[Tensor, " n"],
    seed: int = 0,
) -> dict[str, Estimate]:
    """How much of the all-heads effect single-head ablations see, per example.

    Args:
        single: Single-head effects ``m(clean) - m(head h ablated)``
            (:func:`~lvlm_lens.attribution.single_head_ablation`).
        all_heads_effect: ``m(clean) - m(every head ablated)`` of the same examples.
        seed: Seed of the bootstrap.

    Returns:
        ``sum_ratio``: ``sum_h single_h / all-heads effect`` (1 when the effects add up, far
        below 1 when heads compensate for each other); ``max_ratio``: the largest single
        effect over the all-heads effect; each a mean over examples with its CI.
    """
    flat = torch.as_tensor(single).double().flatten(1)
    total = torch.as_tensor(all_heads_effect).double()
    return {
        "sum_ratio": bootstrap_ci((flat.sum(1) / total).numpy(), seed=seed),
        "max_ratio": bootstrap_ci((flat.max(1).values / total).numpy(), seed=seed),
    }
