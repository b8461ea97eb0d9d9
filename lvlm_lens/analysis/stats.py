"""Statistics shared by every analysis: seeded bootstrap confidence intervals over examples,
permutation p-values, rank correlation.

Every headline number of an analysis is an :class:`Estimate` (value with a bootstrap CI over
examples); comparisons add a permutation p-value. All resampling is seeded (numpy
``default_rng``), so a notebook prints the same numbers on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap confidence interval.

    Attributes:
        value: The statistic on the examples as given.
        low: Lower end of the CI.
        high: Upper end of the CI.
        level: Coverage of the CI (e.g. 0.95).
        n: Number of examples (resampling units).
        p_value: Permutation p-value where the statistic is a comparison, else None.
    """

    value: float
    low: float
    high: float
    level: float = 0.95
    n: int = 0
    p_value: float | None = None

    def __str__(self) -> str:
        return self.format()

    def format(self, spec: str = ".3g") -> str:
        """``value [low, high]`` (and the p-value) with a format spec, e.g. ``".0%"``."""
        text = f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"
        return text if self.p_value is None else f"{text}, p = {self.p_value:.2g}"

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        """``{value, low, high, n[, p_value]}`` with an optional key prefix (for tables)."""
        out = {"value": self.value, "low": self.low, "high": self.high, "n": self.n}
        if self.p_value is not None:
            out["p_value"] = self.p_value
        return {f"{prefix}{k}": v for k, v in out.items()}


def _values(values: Any) -> np.ndarray:
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, float)
    if arr.ndim == 0 or len(arr) == 0:
        raise ValueError("need at least one value (one per example) to estimate a statistic")
    return arr


def bootstrap_ci(
    values: Any,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap CI of ``statistic`` over examples (the first axis of ``values``).

    Args:
        values: One value (or one row) per example; NaN rows are dropped.
        statistic: Maps an ``[n, ...]`` array to a number (default: the mean).
        n_boot: Bootstrap resamples.
        level: Coverage of the interval.
        seed: Seed of the resampling.

    Returns:
        The statistic on all examples and the ``(1 - level) / 2`` and ``(1 + level) / 2``
        quantiles of its bootstrap distribution (equal to the value for one example).
    """
    arr = _values(values)
    keep = ~np.isnan(arr.reshape(len(arr), -1)).any(-1)
    arr = arr[keep]
    if len(arr) == 0:
        return Estimate(np.nan, np.nan, np.nan, level, 0)
    value = float(statistic(arr))
    if len(arr) == 1:
        return Estimate(value, value, value, level, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arr), size=(n_boot, len(arr)))
    boots = np.array([statistic(arr[i]) for i in idx], dtype=float)
    lo, hi = np.nanquantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, float(lo), float(hi), level, len(arr))


def bootstrap_ratio(
    numerators: Any, denominators: Any, *, n_boot: int = 2000, level: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sum(num) / sum(den)`` over examples for many rows at once, with percentile CIs.

    Args:
        numerators: ``[rows, n_examples]`` (e.g. each patch's metric change per example).
        denominators: ``[n_examples]`` (e.g. clean minus corrupted metric per example).
        n_boot: Bootstrap resamples of the examples (shared by all rows).
        level: Coverage.
        seed: Seed.

    Returns:
        ``(value, low, high)``, each ``[rows]``.
    """
    num = np.atleast_2d(np.asarray(numerators, float))
    den = np.asarray(denominators, float)
    value = num.sum(1) / den.sum()
    if num.shape[1] < 2:
        return value, value.copy(), value.copy()
    idx = np.random.default_rng(seed).integers(0, num.shape[1], size=(n_boot, num.shape[1]))
    boots = num[:, idx].sum(-1) / den[idx].sum(-1)
    lo, hi = np.nanquantile(boots, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return value, lo, hi


def sign_flip_test(
    differences: Any, *, n_perm: int = 10000, seed: int = 0, alternative: str = "greater"
) -> float:
    """Paired permutation test: p-value of ``mean(differences)`` under random sign flips.

    Under the null the per-example differences are symmetric around zero. The p-value counts
    the observed statistic among the permutations: ``(1 + #{perm >= obs}) / (1 + n_perm)``.

    Args:
        differences: One paired difference per example (NaNs dropped).
        n_perm: Random sign patterns.
        seed: Seed of the signs.
        alternative: ``"greater"`` (mean > 0), ``"less"`` or ``"two-sided"``.
    """
    d = _values(differences)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return float("nan")
    obs = d.mean()
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, len(d)))
    perm = (signs * d).mean(-1)
    return _p_value(obs, perm, alternative)


def permutation_test(
    a: Any, b: Any, *, n_perm: int = 10000, seed: int = 0, alternative: str = "greater"
) -> float:
    """Two-sample permutation test of ``mean(a) - mean(b)`` (labels shuffled between samples).

    Args:
        a: First sample (NaNs dropped).
        b: Second sample.
        n_perm: Random relabellings.
        seed: Seed of the relabelling.
        alternative: ``"greater"`` (mean(a) > mean(b)), ``"less"`` or ``"two-sided"``.
    """
    a, b = _values(a), _values(b)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    pooled = np.concatenate([a, b])
    obs = a.mean() - b.mean()
    rng = np.random.default_rng(seed)
    perm = np.empty(n_perm)
    for i in range(n_perm):
        x = rng.permutation(pooled)
        perm[i] = x[: len(a)].mean() - x[len(a) :].mean()
    return _p_value(obs, perm, alternative)


def _p_value(obs: float, perm: np.ndarray, alternative: str) -> float:
    tol = 1e-12 * max(1.0, abs(obs))
    if alternative == "greater":
        hits = (perm >= obs - tol).sum()
    elif alternative == "less":
        hits = (perm <= obs + tol).sum()
    elif alternative == "two-sided":
        hits = (np.abs(perm) >= abs(obs) - tol).sum()
    else:
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', "
                         f"got {alternative!r}")
    return float((1 + hits) / (1 + len(perm)))


def rankdata(x: Any) -> np.ndarray:
    """Ranks (average ranks for ties) of the last axis, starting at 0."""
    arr = np.asarray(x, float)
    return pd.DataFrame(arr.reshape(-1, arr.shape[-1]).T).rank().to_numpy().T.reshape(arr.shape) - 1


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two flat score vectors (e.g. two head maps)."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal sizes, got {a.size} and {b.size}")
    return pearson(rankdata(a), rankdata(b))


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation of two flat vectors (NaN if either is constant)."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def ci_table(
    frame: pd.DataFrame,
    by: Sequence[str],
    value: str,
    *,
    unit: str = "example",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean of ``value`` per group of ``by`` with a bootstrap CI over ``unit`` (examples).

    Values are first averaged per ``unit`` within each group, so the CI resamples examples,
    not rows. Returns one row per group: the ``by`` columns, ``mean``, ``low``, ``high``, ``n``.
    """
    rows = []
    per_unit = frame.groupby([*by, unit], sort=False)[value].mean().reset_index()
    for key, part in per_unit.groupby(list(by), sort=False):
        est = bootstrap_ci(part[value].to_numpy(), n_boot=n_boot, level=level, seed=seed)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "mean": est.value, "low": est.low,
                     "high": est.high, "n": est.n})
    return pd.DataFrame(rows)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test (binomial, p = 1/2) of ``wins`` vs ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)
