"""Claim-by-claim evaluation of head rankings: per-example curves with paired statistics.

The pooled comparison (:mod:`~.comparison`) averages the metric over examples before it
normalises, so one ranking can win it on a few examples with large effects. Here every
example gets its own curves (:func:`~.curves.evaluate_ranking` through its own engine) and the
methods are compared example by example:

- a score per example and method: the mean of a curve over ``0 < k <= fraction * n_heads``
  (:func:`~.comparison.early_mean`), for ``fraction`` 10 % and 25 %;
- head attribution vs each other method: wins / losses / ties, the mean difference with a
  seeded bootstrap confidence interval, and a two-sided sign test;
- the number of heads each method needs to reach 80 % faithfulness / completeness;
- where the important heads sit (:func:`layer_distribution`).

Examples whose all-heads effect is near zero
(:func:`~lvlm_lens.interventions.baseline_check.check_baseline`) cannot be normalised and
should be left out before calling :func:`evaluate_per_example`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lvlm_lens.attribution.comparison import HEAD_ATTRIBUTION, early_mean
from lvlm_lens.attribution.curves import Curves, Ks, evaluate_ranking
from lvlm_lens.interventions.engine import AblationEngine

CURVES = ("faithfulness", "completeness")
FRACTIONS = (0.1, 0.25)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test (binomial, p = 1/2) of ``wins`` vs ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (resampling values, seeded)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass
class PerExampleEvaluation:
    """Per-example curves of several rankings on the same examples.

    Attributes:
        curves: Method -> one :class:`~.curves.Curves` per example.
        n_heads: Heads in the model (``n_layers * n_heads``), the scale of ``fraction``.
        example_ids: Name of each example.
        reference: The method the others are compared with (head attribution).
        pooled: Optional pooled curves of the same methods (the mean metric over examples).
    """

    curves: dict[str, list[Curves]]
    n_heads: int
    example_ids: list[str] = field(default_factory=list)
    reference: str = HEAD_ATTRIBUTION
    pooled: dict[str, Curves] | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.curves)

    def scores(self, curve: str = "faithfulness", fraction: float = 0.1) -> Any:
        """``[example x method]`` DataFrame of the curve's mean over the top ``fraction`` heads."""
        import pandas as pd

        data = {
            m: [early_mean(c, curve, fraction, self.n_heads) for c in cs]
            for m, cs in self.curves.items()
        }
        index = self.example_ids or list(range(len(next(iter(data.values())))))
        return pd.DataFrame(data, index=pd.Index(index, name="example"))

    def paired(self, n_boot: int = 2000, seed: int = 0, tie_tol: float = 1e-6) -> Any:
        """The paired statistics: one row per (curve, fraction, other method).

        Columns: ``wins`` / ``losses`` / ``ties`` of the reference (a tie when the scores
        differ by at most ``tie_tol``), ``mean_diff`` (reference - other), its bootstrap
        ``ci_low`` / ``ci_high`` (95 %, seeded), ``sign_p`` (two-sided sign test), ``n`` and
        the pooled scores of both methods when pooled curves were given.
        """
        import pandas as pd

        rows = []
        for curve in CURVES:
            for fraction in FRACTIONS:
                table = self.scores(curve, fraction)
                ref = table[self.reference].to_numpy()
                for other in self.methods:
                    if other == self.reference:
                        continue
                    diff = ref - table[other].to_numpy()
                    diff = diff[np.isfinite(diff)]
                    wins = int((diff > tie_tol).sum())
                    losses = int((diff < -tie_tol).sum())
                    low, high = bootstrap_mean_ci(diff, n_boot, seed)
                    row = {
                        "curve": curve,
                        "fraction": fraction,
                        "method": self.reference,
                        "other": other,
                        "n": len(diff),
                        "wins": wins,
                        "losses": losses,
                        "ties": len(diff) - wins - losses,
                        "mean_diff": float(diff.mean()) if len(diff) else math.nan,
                        "ci_low": low,
                        "ci_high": high,
                        "sign_p": sign_test(wins, losses),
                    }
                    if self.pooled:
                        row["pooled_method"] = early_mean(
                            self.pooled[self.reference], curve, fraction, self.n_heads
                        )
                        row["pooled_other"] = early_mean(
                            self.pooled[other], curve, fraction, self.n_heads
                        )
                    rows.append(row)
        return pd.DataFrame(rows)

    def heads_needed(self, threshold: float = 0.8) -> Any:
        """Heads each method needs to reach ``threshold`` on each curve.

        One row per (method, curve): the median over examples (examples that never reach
        it count as ``n_heads + 1``), how many examples reach it, and the pooled value.
        """
        import pandas as pd

        rows = []
        for m, cs in self.curves.items():
            for curve in CURVES:
                need = [c.heads_needed(threshold, curve) for c in cs]
                filled = [self.n_heads + 1 if k is None else k for k in need]
                pooled = self.pooled[m].heads_needed(threshold, curve) if self.pooled else None
                rows.append(
                    {
                        "method": m,
                        "curve": curve,
                        "threshold": threshold,
                        "median_heads": float(np.median(filled)) if filled else math.nan,
                        "n_reached": sum(k is not None for k in need),
                        "n": len(need),
                        "pooled_heads": pooled,
                    }
                )
        return pd.DataFrame(rows)

    def to_frame(self) -> Any:
        """The paired statistics (:meth:`paired` with its defaults)."""
        return self.paired()

    def plot(self, fraction: float = 0.1) -> Any:
        """Per-example differences (reference - other) at ``fraction``, one panel per curve.

        Dots are examples; the bar is the mean with its bootstrap 95 % CI.
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.6), layout="constrained")
        axes = fig.subplots(1, len(CURVES), sharey=True)
        stats = self.paired()
        others = [m for m in self.methods if m != self.reference]
        for ax, curve in zip(axes, CURVES, strict=True):
            table = self.scores(curve, fraction)
            for j, other in enumerate(others):
                diff = (table[self.reference] - table[other]).to_numpy()
                jitter = np.linspace(-0.15, 0.15, len(diff)) if len(diff) > 1 else [0.0]
                ax.scatter(j + np.asarray(jitter), diff, s=12, alpha=0.6, color="C0")
                row = stats[
                    (stats.curve == curve) & (stats.fraction == fraction) & (stats.other == other)
                ].iloc[0]
                ax.errorbar(
                    j, row.mean_diff, [[row.mean_diff - row.ci_low], [row.ci_high - row.mean_diff]],
                    fmt="s", color="C3", capsize=4,
                )  # fmt: skip
                ax.text(j, ax.get_ylim()[1], f"{row.wins}/{row.losses}/{row.ties}",
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
            ax.axhline(0, color="gray", lw=0.8)
            ax.set_xticks(range(len(others)), others, rotation=20, fontsize=8)
            ax.set_title(f"{curve}, k <= {fraction:.0%} of heads", fontsize=9)
        axes[0].set_ylabel(f"{self.reference} - other (per example)")
        return fig


def evaluate_per_example(
    engines: list[AblationEngine],
    rankings: dict[str, Float[Tensor, "n_examples n_layers n_heads"]],
    ks: Ks = None,
    *,
    example_ids: list[str] | None = None,
    pooled: dict[str, Curves] | None = None,
    batch_size: int | None = None,
) -> PerExampleEvaluation:
    """Curves of each example's own ranking, for every method.

    Args:
        engines: One engine per example, each over a one-example input.
        rankings: Method -> per-example importance ``[n_examples, n_layers, n_heads]``
            (larger = more important); must include head attribution.
        ks: Numbers of top heads (default :func:`~.curves.default_ks`).
        example_ids: Name of each example.
        pooled: Optional pooled curves, reported beside the per-example statistics.
        batch_size: Masks per engine call (default: the engine's).

    Returns:
        The per-example evaluation.
    """
    if HEAD_ATTRIBUTION not in rankings:
        raise ValueError(f"rankings must include {HEAD_ATTRIBUTION!r}, got {list(rankings)}")
    for name, r in rankings.items():
        if r.ndim != 3 or len(r) != len(engines):
            raise ValueError(
                f"ranking {name!r} must be [n_examples={len(engines)}, n_layers, n_heads], "
                f"got {tuple(r.shape)}"
            )
    if any(len(e.inp) != 1 for e in engines):
        raise ValueError("evaluate_per_example needs one engine per example (one-example inputs)")
    curves: dict[str, list[Curves]] = {name: [] for name in rankings}
    for i, engine in enumerate(engines):

        def run(masks: Tensor, engine: AblationEngine = engine) -> Tensor:
            return engine.run(masks.cpu(), progress=False)[0]

        for name, r in rankings.items():
            curves[name].append(evaluate_ranking(run, r[i].float(), ks, batch_size))
    cfg = engines[0].model.cfg
    return PerExampleEvaluation(
        curves, cfg.n_layers * cfg.n_heads, list(example_ids or []), HEAD_ATTRIBUTION, pooled
    )


@dataclass
class LayerDistribution:
    """Where the top heads of a ranking sit.

    Attributes:
        counts: ``[n_layers]`` top heads per layer, pooled over examples (per-example rankings)
            or of the single ranking.
        later_half: Share of the top heads in layers ``>= n_layers // 2``.
        ci: Bootstrap 95 % CI of ``later_half`` over examples (``nan`` for one ranking).
        k: Top heads taken per ranking.
        per_example_later_half: That share per example.
    """

    counts: np.ndarray
    later_half: float
    ci: tuple[float, float]
    k: int
    per_example_later_half: list[float] = field(default_factory=list)

    def to_frame(self) -> Any:
        """One row per layer: number and share of the top heads."""
        import pandas as pd

        total = max(1, int(self.counts.sum()))
        return pd.DataFrame(
            {
                "layer": range(len(self.counts)),
                "top_heads": self.counts.astype(int),
                "share": self.counts / total,
            }
        )

    def plot(self) -> Any:
        """Bar chart of the share of top heads per layer."""
        from matplotlib.figure import Figure

        frame = self.to_frame()
        fig = Figure(figsize=(5, 3), layout="constrained")
        ax = fig.subplots()
        ax.bar(frame.layer, frame.share, color="C0")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"share of the top {self.k} heads")
        low, high = self.ci
        ax.set_title(
            f"later half: {self.later_half:.0%}"
            + ("" if math.isnan(low) else f" (95 % CI {low:.0%}-{high:.0%})"),
            fontsize=9,
        )
        return fig


def layer_distribution(
    ranking: Float[Tensor, "... n_layers n_heads"],
    fraction: float = 0.1,
    n_boot: int = 2000,
    seed: int = 0,
) -> LayerDistribution:
    """Layers of the top ``fraction`` heads of one ranking or of each example's ranking.

    Args:
        ranking: ``[n_layers, n_heads]`` or per example ``[n_examples, n_layers, n_heads]``.
        fraction: Share of all heads taken as "top" (at least one).
        n_boot: Bootstrap resamples of the examples for the CI of the later-half share.
        seed: Seed of the bootstrap.
    """
    r = ranking.float()
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3:
        raise ValueError(
            f"ranking must be [n_layers, n_heads] or [n, n_layers, n_heads], got {r.shape}"
        )
    n, n_layers, n_heads = r.shape
    k = max(1, int(fraction * n_layers * n_heads))
    top = torch.topk(r.reshape(n, -1), k, dim=1).indices // n_heads  # layer of each top head
    counts = torch.zeros(n_layers, dtype=torch.long)
    counts.scatter_add_(0, top.flatten(), torch.ones(top.numel(), dtype=torch.long))
    later = (top >= n_layers // 2).float().mean(1).tolist()
    ci = bootstrap_mean_ci(later, n_boot, seed) if n > 1 else (math.nan, math.nan)
    return LayerDistribution(counts.numpy(), float(np.mean(later)), ci, k, later)
