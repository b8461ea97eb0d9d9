"""Faithfulness and completeness curves of a head ranking.

With ``f(S)`` the metric when only the heads in ``S`` keep their image access (every other head
ablated) and ``g(S)`` the metric when only the heads in ``S`` are ablated::

    faithfulness(k) = (f(top_k) - f(∅)) / (f(all) - f(∅))
    completeness(k) = (g(∅) - g(top_k)) / (g(∅) - g(all))

``f(all) = g(∅)`` is the clean metric (nothing ablated) and ``f(∅) = g(all)`` the metric with
every head ablated, so both curves run from 0 at ``k = 0`` to 1 at ``k = n_layers·n_heads``; a
better ranking gets close to 1 with fewer heads. Masks follow :mod:`~.regression`:
``True`` = head ablated. A ``run_masks`` callable (the masked-run engine) maps a batch of masks
to one metric each.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lvlm_lens.progress import progress_bar, show_progress

RunMasks = Callable[[Bool[Tensor, "n n_layers n_heads"]], Float[Tensor, " n"]]
Ks = Sequence[int] | Int[Tensor, " n_ks"] | None


@dataclass
class Curves:
    """Faithfulness / completeness of one ranking at several ``k``.

    Attributes:
        ks: Numbers of top heads.
        faithfulness: ``(f(top_k) - f(∅)) / (f(all) - f(∅))``.
        completeness: ``(g(∅) - g(top_k)) / (g(∅) - g(all))``.
        f_values: ``f(top_k)``: metric with only the top ``k`` heads kept.
        g_values: ``g(top_k)``: metric with only the top ``k`` heads ablated.
        clean: ``f(all) = g(∅)``, nothing ablated.
        ablated: ``f(∅) = g(all)``, every head ablated.
    """

    ks: Int[Tensor, " n_ks"]
    faithfulness: Float[Tensor, " n_ks"]
    completeness: Float[Tensor, " n_ks"]
    f_values: Float[Tensor, " n_ks"]
    g_values: Float[Tensor, " n_ks"]
    clean: float
    ablated: float

    def heads_needed(self, threshold: float = 0.8, curve: str = "faithfulness") -> int | None:
        """Smallest evaluated ``k`` whose ``curve`` reaches ``threshold`` (None if none does)."""
        hit = (getattr(self, curve) >= threshold).nonzero()
        return int(self.ks[hit[0, 0]]) if len(hit) else None


@dataclass
class RandomBand:
    """Quantiles of the curves of random rankings.

    Attributes:
        ks: Numbers of top heads.
        quantiles: The quantile levels.
        faithfulness: ``[n_quantiles, n_ks]`` quantiles of faithfulness over random rankings.
        completeness: ``[n_quantiles, n_ks]`` quantiles of completeness over random rankings.
        all_faithfulness: ``[n_random, n_ks]``, faithfulness of each random ranking.
        all_completeness: ``[n_random, n_ks]``, completeness of each random ranking.
    """

    ks: Int[Tensor, " n_ks"]
    quantiles: tuple[float, ...]
    faithfulness: Float[Tensor, "n_quantiles n_ks"]
    completeness: Float[Tensor, "n_quantiles n_ks"]
    all_faithfulness: Float[Tensor, "n_random n_ks"]
    all_completeness: Float[Tensor, "n_random n_ks"]


def default_ks(n_total: int, n_points: int = 24) -> list[int]:
    """``0``, then about ``n_points`` log-spaced sizes up to ``n_total`` (included).

    Args:
        n_total: Number of heads (``n_layers * n_heads``).
        n_points: Approximate number of non-zero ``k``.

    Returns:
        Sorted distinct ``k``.
    """
    steps = torch.logspace(0, math.log10(n_total), n_points, dtype=torch.float64)
    return sorted({0, n_total, *steps.round().long().tolist()})


def _check_ks(ks: Ks, n_total: int) -> Int[Tensor, " n_ks"]:
    ks = torch.as_tensor(default_ks(n_total) if ks is None else ks, dtype=torch.long).flatten()
    if len(ks) == 0 or ks.min() < 0 or ks.max() > n_total:
        raise ValueError(f"ks must be non-empty, within [0, {n_total}], got {ks.tolist()}")
    return ks


def ranking_to_masks(
    ranking: Float[Tensor, "n_layers n_heads"], ks: Ks
) -> tuple[Bool[Tensor, "n_ks n_layers n_heads"], Bool[Tensor, "n_ks n_layers n_heads"]]:
    """Ablation masks that evaluate ``f(top_k)`` and ``g(top_k)``.

    Args:
        ranking: Head scores, higher = more important (e.g. ``-coef``); ties keep layer-major
            order.
        ks: Numbers of top heads (default :func:`default_ks`).

    Returns:
        ``(keep_masks, ablate_masks)``: for ``f`` every head *but* the top ``k`` is ablated;
        for ``g`` only the top ``k`` are. ``True`` = ablated.
    """
    if ranking.ndim != 2:
        raise ValueError(f"ranking must be [n_layers, n_heads], got {tuple(ranking.shape)}")
    ks = _check_ks(ks, ranking.numel()).to(ranking.device)
    order = torch.sort(ranking.flatten(), descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    top = (rank[None] < ks[:, None]).reshape(len(ks), *ranking.shape)
    return ~top, top


def curves_from_metrics(
    f_values: Float[Tensor, " n_ks"],
    g_values: Float[Tensor, " n_ks"],
    f_empty: float,
    f_all: float,
    g_empty: float,
    g_all: float,
) -> tuple[Float[Tensor, " n_ks"], Float[Tensor, " n_ks"]]:
    """Normalise raw metrics into faithfulness and completeness.

    ``faithfulness = (f_values - f_empty) / (f_all - f_empty)`` and
    ``completeness = (g_empty - g_values) / (g_empty - g_all)``. A zero denominator (ablating
    every head does not change the metric) gives nan, with a warning.

    Args:
        f_values: ``f(top_k)``, metric with only the top ``k`` heads kept.
        g_values: ``g(top_k)``, metric with only the top ``k`` heads ablated.
        f_empty: ``f(∅)``, every head ablated.
        f_all: ``f(all)``, nothing ablated.
        g_empty: ``g(∅)``, nothing ablated.
        g_all: ``g(all)``, every head ablated.

    Returns:
        ``(faithfulness, completeness)``.
    """
    f_den = (float(f_all) - float(f_empty)) or math.nan  # 0 -> nan curves
    g_den = (float(g_empty) - float(g_all)) or math.nan
    if math.isnan(f_den) or math.isnan(g_den):
        warnings.warn("ablating every head leaves the metric unchanged: nan curves", stacklevel=2)
    f, g = (torch.as_tensor(v, dtype=torch.float64) for v in (f_values, g_values))
    return (f - float(f_empty)) / f_den, (float(g_empty) - g) / g_den


def _run(run_masks: RunMasks, masks: Tensor, batch_size: int | None, desc: str) -> Tensor:
    """``run_masks`` over ``masks`` in chunks of ``batch_size``, with a progress bar."""
    size = batch_size or len(masks)
    out = []
    show = None if len(masks) > size else False  # one chunk: no bar
    for chunk in progress_bar(masks.split(size), desc=desc, show=show):
        values = torch.as_tensor(run_masks(chunk)).detach().double().cpu().flatten()
        if len(values) != len(chunk):
            raise ValueError(f"run_masks returned {len(values)} values for {len(chunk)} masks")
        out.append(values)
    return torch.cat(out)


def _endpoints(run_masks: RunMasks, shape, device, batch_size) -> tuple[float, float]:
    """(clean, ablated): the metric with no head / every head ablated."""
    ends = torch.zeros(2, *shape, dtype=torch.bool, device=device)
    ends[1] = True
    clean, ablated = _run(run_masks, ends, batch_size, "endpoints").tolist()
    return clean, ablated


def curves_given_endpoints(
    run_masks: RunMasks,
    ranking: Float[Tensor, "n_layers n_heads"],
    ks: Ks,
    clean: float,
    ablated: float,
    batch_size: int | None = None,
    desc: str = "top-k masks",
) -> Curves:
    """:func:`evaluate_ranking` with the endpoints (clean, every head ablated) already known."""
    keep, ablate = ranking_to_masks(ranking, ks)
    values = _run(run_masks, torch.cat([keep, ablate]), batch_size, desc)
    f, g = values[: len(keep)], values[len(keep) :]
    faith, comp = curves_from_metrics(f, g, ablated, clean, clean, ablated)
    return Curves(_check_ks(ks, ranking.numel()), faith, comp, f, g, clean, ablated)


def endpoints(
    run_masks: RunMasks, n_layers: int, n_heads: int, batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """``(clean, ablated)``: the metric with no head / every head ablated."""
    return _endpoints(run_masks, (n_layers, n_heads), device, batch_size)


def evaluate_ranking(
    run_masks: RunMasks,
    ranking: Float[Tensor, "n_layers n_heads"],
    ks: Ks = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> Curves:
    """Faithfulness and completeness curves of a ranking (see the module docstring).

    Runs ``2 + 2·len(ks)`` masks: the clean and all-ablated endpoints, then for each ``k`` the
    "keep only top-k" and "ablate only top-k" masks.

    Args:
        run_masks: Maps bool ablation masks ``[n, n_layers, n_heads]`` to metrics ``[n]``.
        ranking: Head scores, higher = more important (e.g. ``AttributionResult.scores()``).
        ks: Numbers of top heads (default :func:`default_ks`).
        batch_size: Masks per ``run_masks`` call (default: all at once).
        progress: Show progress bars (on a terminal).

    Returns:
        The curves.
    """
    with show_progress(progress):
        clean, ablated = _endpoints(run_masks, ranking.shape, ranking.device, batch_size)
        return curves_given_endpoints(run_masks, ranking, ks, clean, ablated, batch_size)


def random_band(
    run_masks: RunMasks,
    n_layers: int,
    n_heads: int,
    ks: Ks = None,
    n_random: int = 20,
    seed: int = 0,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> RandomBand:
    """Curves of ``n_random`` uniformly random rankings, summarised by quantiles.

    Args:
        run_masks: As in :func:`evaluate_ranking`.
        n_layers: Layers of the model.
        n_heads: Query heads per layer.
        ks: Numbers of top heads (default :func:`default_ks`).
        n_random: Number of random rankings.
        seed: Seed of the (CPU) generator drawing the rankings.
        quantiles: Quantile levels of the band (nan curves are ignored).
        batch_size: As in :func:`evaluate_ranking`.
        device: Device of the masks handed to ``run_masks``.
        progress: Show progress bars (on a terminal).

    Returns:
        The band.
    """
    rankings = random_rankings(n_layers, n_heads, n_random, seed, device)
    with show_progress(progress):
        clean, ablated = _endpoints(run_masks, (n_layers, n_heads), device, batch_size)
        runs = [
            curves_given_endpoints(run_masks, r, ks, clean, ablated, batch_size, "masks")
            for r in progress_bar(rankings, desc="random rankings", show=None)
        ]
    return band_of(runs, quantiles)


def random_rankings(
    n_layers: int, n_heads: int, n_random: int, seed: int = 0,
    device: torch.device | str | None = None,
) -> list[Float[Tensor, "n_layers n_heads"]]:
    """The uniformly random rankings of :func:`random_band` (a seeded CPU generator)."""
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}")
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand((n_layers, n_heads), generator=gen).to(device) for _ in range(n_random)]


def band_of(runs: Sequence[Curves], quantiles: Sequence[float] = (0.05, 0.5, 0.95)) -> RandomBand:
    """Quantiles (nan curves ignored) of the curves of random rankings."""
    faith = torch.stack([c.faithfulness for c in runs])
    comp = torch.stack([c.completeness for c in runs])
    q = torch.tensor(quantiles, dtype=torch.float64)
    return RandomBand(
        runs[0].ks, tuple(quantiles), faith.nanquantile(q, 0), comp.nanquantile(q, 0), faith, comp
    )
