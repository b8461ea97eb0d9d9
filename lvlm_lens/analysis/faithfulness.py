"""Faithfulness and completeness of head rankings with confidence bands over examples.

:func:`~lvlm_lens.attribution.curves.evaluate_ranking` gives the curves of one ranking on one
``run_masks``. Here every ranking is evaluated on every example separately, and the curve is
pooled as a ratio of sums over examples (so an example whose metric barely moves when every
head is ablated cannot blow the curve up), with a bootstrap band over examples:

    faithfulness(k) = Σ_i (f_i(top-k) - f_i(∅)) / Σ_i (f_i(all) - f_i(∅))
    completeness(k) = Σ_i (g_i(∅) - g_i(top-k)) / Σ_i (g_i(∅) - g_i(all))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from lvlm_lens.analysis.stats import bootstrap_ratio
from lvlm_lens.attribution.curves import default_ks, evaluate_ranking
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.viz.plots import line_plot


@dataclass
class CurvesResult:
    """Pooled faithfulness / completeness curves of several rankings with 95 % bands.

    Attributes:
        frame: One row per (ranking, curve, k): ``mean``, ``low``, ``high``.
        per_example: One row per (ranking, example, k): ``f``, ``g``, ``clean``, ``ablated``.
        n_heads: Number of heads ranked.
    """

    frame: pd.DataFrame
    per_example: pd.DataFrame
    n_heads: int

    def to_frame(self) -> pd.DataFrame:
        """The pooled curves with their bands."""
        return self.frame

    def at(self, k: int, curve: str = "completeness") -> pd.DataFrame:
        """Each ranking's value (with band) at the evaluated ``k``."""
        f = self.frame
        return f[(f.k == k) & (f.curve == curve)].reset_index(drop=True)

    def heads_needed(self, threshold: float = 0.8, curve: str = "faithfulness") -> pd.Series:
        """Per ranking, the smallest evaluated k whose pooled curve reaches ``threshold``."""
        f = self.frame[(self.frame.curve == curve) & (self.frame["mean"] >= threshold)]
        return f.groupby("ranking", sort=False).k.min()

    def plot(self, max_k: int | None = None) -> Any:
        """Both curves over k, one line per ranking, with 95 % bands over examples."""
        f = self.frame if max_k is None else self.frame[self.frame.k <= max_k]
        return line_plot(f, "k", hue="ranking", panels="curve", xlabel="top-k heads",
                         ylabel="share of the effect", zero_line=False)


def ranking_curves(
    engines: Sequence[AblationEngine],
    rankings: dict[str, Tensor],
    ks: Sequence[int] | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> CurvesResult:
    """Curves of each ranking on each example, pooled over examples with bootstrap bands.

    Args:
        engines: One :class:`~lvlm_lens.interventions.AblationEngine` per example (or one
            for a batch: each of its examples counts).
        rankings: Name -> ``[n_layers, n_heads]`` scores (higher = more important), or
            ``[n_examples, n_layers, n_heads]`` for per-example rankings.
        ks: Numbers of top heads (default :func:`~lvlm_lens.attribution.curves.default_ks`).
        n_boot: Bootstrap resamples over examples.
        seed: Seed of the bootstrap.
    """
    runners = [(e, i) for e in engines for i in range(len(e.inp))]
    first = next(iter(rankings.values()))
    n_layers, n_heads = first.shape[-2:]
    ks = list(default_ks(n_layers * n_heads) if ks is None else ks)
    rows = []
    for name, ranking in rankings.items():
        for ex, (engine, i) in enumerate(runners):
            r = ranking[ex] if ranking.ndim == 3 else ranking

            def run(masks: Tensor, engine: AblationEngine = engine, i: int = i) -> Tensor:
                return engine.run(masks.cpu(), examples=[i], progress=False)[0]

            c = evaluate_ranking(run, torch.as_tensor(r).float(), ks)
            for j, k in enumerate(c.ks.tolist()):
                rows.append({"ranking": name, "example": ex, "k": k,
                             "f": float(c.f_values[j]), "g": float(c.g_values[j]),
                             "clean": c.clean, "ablated": c.ablated})
    per = pd.DataFrame(rows)
    out = []
    for name, part in per.groupby("ranking", sort=False):
        f = part.pivot(index="k", columns="example", values="f")
        g = part.pivot(index="k", columns="example", values="g")
        ends = part.groupby("example")[["clean", "ablated"]].first().loc[f.columns]
        span = (ends.clean - ends.ablated).to_numpy()
        for curve, num in (("faithfulness", f.to_numpy() - ends.ablated.to_numpy()),
                           ("completeness", ends.clean.to_numpy() - g.to_numpy())):
            value, low, high = bootstrap_ratio(num, span, n_boot=n_boot, seed=seed)
            out += [{"ranking": name, "curve": curve, "k": int(k), "mean": v, "low": lo,
                     "high": hi} for k, v, lo, hi in zip(f.index, value, low, high, strict=True)]
    return CurvesResult(pd.DataFrame(out), per, int(n_layers * n_heads))


def random_rankings(n_layers: int, n_heads: int, n: int, seed: int = 0) -> Tensor:
    """``[n, n_layers, n_heads]`` uniformly random scores: one random ranking per example, a
    chance baseline for :func:`ranking_curves`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, n_layers, n_heads), generator=gen)
