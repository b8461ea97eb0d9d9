"""The fits of :mod:`~lvlm_lens.attribution.regression` from masks drawn chunk by chunk.

:func:`~lvlm_lens.attribution.regression.fit_pooled` holds float64 copies of every training row
(8 bytes per head, about three copies). Here each split's sums (rows and feature sums per group,
``Σ w_i x_i x_iᵀ``, ``Σ x_i r_i`` with ``r`` the targets centred per group) are accumulated
over chunks of a :class:`~lvlm_lens.attribution.mask_source.MaskSource`, so the fit's peak is
one chunk and a few ``heads × heads`` matrices whatever the mask count. Splits, penalty grids
and choices are those of ``fit_linear`` / ``fit_pooled`` (same seeds, same rows): the fits are
theirs up to float64 rounding. All examples of a run share their masks and (per example) their
split, so one pass fits every example.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lvlm_lens.attribution.mask_source import MaskSource
from lvlm_lens.attribution.regression import (
    VAL_FRACTION,
    FitSettings,
    LinearFit,
    _center,
    _split,
    check_train,
    lasso_path,
    penalty_grid,
)

#: Mask elements (rows x heads) per chunk the fit reads (a float64 chunk is 8 bytes each).
FIT_CHUNK = 2**20


@dataclass
class SplitSums:
    """What a fit needs of one split's rows ``(group e, mask i)``.

    Attributes:
        counts: Rows of each group.
        sums: ``Σ x_i`` over each group's rows.
        gram: ``Σ x_i x_iᵀ`` over all rows.
        xr: ``Σ x_i r_i`` per target column (``r``: targets centred per group, 0 off the split).
    """

    counts: Float[Tensor, " n_groups"]
    sums: Float[Tensor, "p n_groups"]
    gram: Float[Tensor, "p p"]
    xr: Float[Tensor, "p n_targets"]

    def centred_gram(self) -> Float[Tensor, "p p"]:
        """``Σ (x_i - x̄_e)(x_i - x̄_e)ᵀ``: the Gram matrix of the rows centred per group."""
        return self.gram - (self.sums / self.counts.clamp_min(1)) @ self.sums.T


def fit_chunks(source: MaskSource) -> Iterator[tuple[slice, Float[Tensor, "chunk p"]]]:
    """``(rows, float64 flattened masks)`` in chunks of about :data:`FIT_CHUNK` elements."""
    rows = max(1, FIT_CHUNK // (source.n_layers * source.n_heads))
    src = dataclasses.replace(source, chunk_size=rows)
    for c, part in src.chunks():
        r = src.chunk_rows(c)
        yield slice(r.start, r.stop), part.flatten(1).to(torch.float64)


def accumulate(
    source: MaskSource,
    splits: Sequence[tuple[Bool[Tensor, "n_masks n_groups"], Float[Tensor, "n_masks n_targets"]]],
) -> list[SplitSums]:
    """One pass over ``source``: the :class:`SplitSums` of each split.

    Args:
        source: The masks.
        splits: Per split, ``members[i, e]`` (row ``(e, i)`` is in the split) and the centred
            targets ``r[i, k]`` summed over the split's groups (0 where mask ``i`` is in none).
    """
    p = source.n_layers * source.n_heads
    f64 = torch.float64
    out = [SplitSums(m.sum(0).to(f64), torch.zeros(p, m.shape[1], dtype=f64),
                     torch.zeros(p, p, dtype=f64), torch.zeros(p, r.shape[1], dtype=f64))
           for m, r in splits]  # fmt: skip
    for rows, x in fit_chunks(source):
        for sums, (m, r) in zip(out, splits, strict=True):
            mc = m[rows].double()
            sums.sums += x.T @ mc
            sums.gram += x.T @ (x * mc.sum(1, keepdim=True))
            sums.xr += x.T @ r[rows]
    return out


def _members(idx: Tensor, n: int, n_groups: int) -> Bool[Tensor, "n n_groups"]:
    flat = torch.zeros(n_groups * n, dtype=torch.bool)
    flat[idx] = True  # stacked rows: row e * n + i is (group e, mask i)
    return flat.view(n_groups, n).T


class _Layout:
    """Rows, groups and targets of one batch of fits: ``pooled`` = one fit over the examples'
    groups, else one fit per example over one shared group (same split for each)."""

    def __init__(self, targets: Tensor, pooled: bool, settings: FitSettings):
        n_ex, self.n = targets.shape
        self.pooled, self.s = pooled, settings
        self.n_groups = n_ex if pooled else 1
        # truth[i, k, e]: target k's value on row (e, i)
        self.truth = targets.T[:, None, :] if pooled else targets.T[:, :, None]
        g = torch.arange(self.n_groups).repeat_interleave(self.n)
        gen = torch.Generator().manual_seed(settings.seed)
        train, test = _split(g, self.n_groups, settings.holdout, gen)
        self.grid = None if settings.method == "ols" else penalty_grid(settings.method,
                                                                       settings.alphas)
        frac = VAL_FRACTION if self.grid is not None and len(self.grid) > 1 else 0.0
        sub, val = _split(g[train], self.n_groups, frac, gen) if self.grid is not None else (
            torch.arange(len(train)), train[:0])
        self.train, self.test = self.members(train), self.members(test)
        self.sub, self.val = self.members(train[sub]), self.members(train[val])

    def members(self, idx: Tensor) -> Tensor:
        return _members(idx, self.n, self.n_groups)

    def centred(self, m: Tensor) -> tuple[Tensor, Tensor]:
        """Group means ``[K, G]`` of the targets over a split and the centred targets ``[n, K]``
        summed over its groups."""
        w = m[:, None, :].to(self.truth.dtype)
        mean = (w * self.truth).sum(0) / w.sum(0).clamp_min(1)
        return mean, (w * (self.truth - mean)).sum(2)


def _solve(sums: SplitSums, mean: Tensor, method: str, alphas: Tensor) -> tuple[Tensor, Tensor]:
    """Coefficients ``[K, A, p]`` and intercepts ``[K, A, G]`` of ``alphas[k]`` ``[K, A]``."""
    gram, n_rows = sums.centred_gram(), sums.counts.sum()
    n_targets, p = sums.xr.shape[1], gram.shape[0]
    coefs = gram.new_zeros(n_targets, alphas.shape[1], p)
    if method == "ridge":  # one solve per distinct penalty, for every target at once
        eye = torch.eye(p, dtype=gram.dtype)
        for a in alphas.unique().tolist():
            sol = torch.linalg.solve(gram + a * n_rows * eye, sums.xr).T
            hit = alphas == a
            coefs[hit] = sol[:, None, :].expand(-1, alphas.shape[1], -1)[hit]
    elif method == "lasso":
        for k in range(n_targets):
            coefs[k] = lasso_path(gram / n_rows, sums.xr[:, k] / n_rows, alphas[k])
    else:  # OLS; heads constant within every group are unidentifiable and get β = 0
        live = ((sums.sums > 0) & (sums.sums < sums.counts)).any(1)
        sol = torch.linalg.lstsq(gram[live][:, live], sums.xr[live], driver="gelsd").solution
        coefs[:, 0, live] = sol.T
    means = sums.sums / sums.counts.clamp_min(1)
    return coefs, mean[:, None, :] - coefs @ means


def _val_mse(source: MaskSource, lay: _Layout, coefs: Tensor, b0: Tensor) -> Tensor:
    """Validation MSE ``[K, A]`` of each target's fits."""
    total = coefs.new_zeros(coefs.shape[:2])
    for rows, x in fit_chunks(source):
        m, truth = lay.val[rows][:, None, :].double(), lay.truth[rows]
        for a in range(coefs.shape[1]):
            err = x @ coefs[:, a].T  # [chunk, K]
            total[:, a] += (((err[:, :, None] + b0[:, a] - truth) ** 2) * m).sum((0, 2))
    return total / lay.val.sum()


def _held_out(source: MaskSource, lay: _Layout, coefs: Tensor, b0: Tensor) -> list[tuple]:
    """Per target, held-out ``(r, R²)`` within group, as :func:`fit_pooled` scores them."""
    pred = torch.empty_like(lay.truth)
    for rows, x in fit_chunks(source):
        pred[rows] = (x @ coefs[:, 0].T)[:, :, None] + b0[:, 0]
    g = torch.arange(lay.n_groups).expand(lay.n, -1)[lay.test]
    out = []
    for k in range(pred.shape[1]):
        yt, pk = lay.truth[:, k][lay.test], pred[:, k][lay.test]
        if len(yt) <= 1:
            out.append((math.nan, math.nan))
            continue
        _, _, c, _ = _center(torch.stack([yt, pk], 1), yt, g, lay.n_groups)
        r = (c[:, 0] @ c[:, 1] / (c[:, 0].norm() * c[:, 1].norm())).item()
        out.append((r, (1 - ((yt - pk) ** 2).sum() / (c[:, 0] ** 2).sum()).item()))
    return out


def _fit_batch(source: MaskSource, targets: Tensor, pooled: bool,
               settings: FitSettings) -> list[LinearFit]:  # fmt: skip
    method, p = settings.method, source.n_layers * source.n_heads
    if targets.ndim != 2 or targets.shape[1] != source.n_masks or not torch.isfinite(
            targets).all():  # fmt: skip
        raise ValueError(f"targets must be finite [n_examples, n_masks={source.n_masks}], got "
                         f"{tuple(targets.shape)}")  # fmt: skip
    lay = _Layout(targets.to(torch.float64), pooled, settings)
    n_train = int(lay.train.sum())
    check_train(n_train, method, p, lay.n_groups, settings.holdout)
    sub_mean, sub_r = lay.centred(lay.sub)
    train_mean, train_r = lay.centred(lay.train)
    n_targets = sub_r.shape[1]
    search = lay.grid is not None and len(lay.grid) > 1
    if search:
        sub, train = accumulate(source, [(lay.sub, sub_r), (lay.train, train_r)])
    else:
        (train,) = accumulate(source, [(lay.train, train_r)])
        sub = train
    grid = None if lay.grid is None else lay.grid.expand(n_targets, -1).clone()
    if method == "lasso" and settings.alphas is None:  # fractions of λ_max, per target
        grid *= sub.xr.abs().max(0).values[:, None] / sub.counts.sum()
    val_mse, alpha = None, torch.zeros(n_targets, 1, dtype=torch.float64)
    if grid is not None:
        alpha = grid[:, :1]
    if search:
        coefs, b0 = _solve(sub, sub_mean, method, grid)
        val_mse = _val_mse(source, lay, coefs, b0)
        alpha = grid.gather(1, val_mse.argmin(1, keepdim=True))
    coefs, b0 = _solve(train, train_mean, method, alpha)
    scores = _held_out(source, lay, coefs, b0)
    shape, n_test = (source.n_layers, source.n_heads), int(lay.test.sum())
    return [
        LinearFit(coefs[k, 0].reshape(shape), b0[k, 0].mean().item(), alpha[k, 0].item(), method,
                  *scores[k], n_train, n_test,
                  None if grid is None else grid[k], None if val_mse is None else val_mse[k],
                  b0[k, 0] if pooled and lay.n_groups > 1 else None)  # fmt: skip
        for k in range(n_targets)
    ]


def fit_each(
    source: MaskSource, targets: Float[Tensor, "n_examples n_masks"], method: str = "ridge",
    alphas: Sequence[float] | Tensor | None = None, holdout: float = 0.2, seed: int = 0,
) -> list[LinearFit]:  # fmt: skip
    """Per example, :func:`~lvlm_lens.attribution.regression.fit_linear` of its targets on the
    masks of ``source`` (one pass for all examples: they share masks and split).

    Args:
        source: The masks (drawn chunk by chunk).
        targets: Per example, the metric of each masked run.
        method, alphas, holdout, seed: As in :func:`~lvlm_lens.attribution.regression.fit_linear`.

    Returns:
        One fit per example.
    """
    return _fit_batch(source, targets, False, FitSettings(method, alphas, holdout, seed))


def fit_pooled_chunked(
    source: MaskSource, targets: Float[Tensor, "n_examples n_masks"], method: str = "ridge",
    alphas: Sequence[float] | Tensor | None = None, holdout: float = 0.2, seed: int = 0,
) -> LinearFit:  # fmt: skip
    """:func:`~lvlm_lens.attribution.regression.fit_pooled` over the examples' targets, all on
    the masks of ``source`` (drawn chunk by chunk; arguments as in :func:`fit_each`)."""
    return _fit_batch(source, targets, True, FitSettings(method, alphas, holdout, seed))[0]


def chunked_fit_memory(n_masks: int, n_features: int, n_examples: int = 1,
                       method: str = "ridge", holdout: float = 0.2) -> int:
    """Upper bound, in bytes, on the peak memory :func:`fit_each` and :func:`fit_pooled_chunked`
    add over ``n_examples`` examples of ``n_masks`` masks (the pooled fit is the larger).

    Per element of a chunk (at most :data:`FIT_CHUNK`): the float32 draw and its bool copy,
    the float64 copy, its weighted copy and the matrix product's packed operands (40 bytes).
    Per ``(example, mask)`` row: the splits' index vectors (~10 of 8 bytes), the float64
    targets, their centred copies and the predictions (~10 of 8 bytes). A dozen
    ``heads × heads`` float64 matrices (two splits' Gram matrices, the centred one, the solve's
    copies); per example ~30 float64 ``heads`` vectors (sums, ``Σ x r``, the coefficients of
    every penalty of the default grids). The same for every method and holdout.
    """
    del holdout, method
    p, n_rows = n_features, n_masks * n_examples
    chunk = min(n_masks, max(1, FIT_CHUNK // p)) * p
    return 40 * chunk + n_rows * 160 + 12 * 8 * p * p + n_examples * 30 * 8 * p
