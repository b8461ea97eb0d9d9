"""Head attribution: fit ``z(m) ≈ β₀ + Σ_h β_h m_h`` from random head-ablation masks.

``m_h = True`` = head ``h`` ablated: heads whose ablation lowers the metric get ``β_h < 0``
(``importance = -coef``). Fits run in float64 on the masks' device on centred data (unpenalised
intercept); seeds drive CPU generators. Ridge / lasso pick their penalty on a validation split
of the *train* masks: held-out masks (reported r, R²) are never used to fit or select.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lvlm_lens.errors import OptionError
from lvlm_lens.progress import progress_bar

Method = Literal["ridge", "ols", "lasso"]
#: Ridge penalties α of ``mean((y - Xβ)²) + α|β|²`` (i.e. ``α·n_train`` on the sum of squares).
DEFAULT_RIDGE_ALPHAS: tuple[float, ...] = tuple(10.0 ** (e / 2) for e in range(-8, 7))
#: Lasso grid as fractions of ``λ_max = max|Xᵀy|/n``, the smallest λ with β = 0.
DEFAULT_LASSO_FRACTIONS: tuple[float, ...] = tuple(10.0 ** (e / 2) for e in range(-8, 1))
VAL_FRACTION = 0.2  # share of the train masks used to choose the penalty
#: Fewest held-out masks per example: a Pearson r of fewer points says nothing (2 give ±1).
MIN_HELDOUT = 3


@dataclass
class LinearFit:
    """A fitted head-attribution model.

    Attributes:
        coef: ``β_h`` per head, ``[n_layers, n_heads]``; negative = ablation lowers the metric.
        intercept: ``β₀`` (pooled fit: mean of ``example_intercepts``).
        alpha: Chosen penalty (0 for OLS).
        method: ``"ridge"``, ``"ols"`` or ``"lasso"``.
        pearson_r: Held-out Pearson r of predicted vs true metric (nan if nothing is held out).
        r2: Held-out R² of predicted vs true metric (nan if nothing is held out).
        n_train: Masks used for the final fit.
        n_test: Masks held out.
        alphas: Penalty grid searched (None for OLS or without a search).
        val_mse: Validation MSE of each penalty of ``alphas``.
        example_intercepts: Per-example intercepts of a pooled fit.
    """

    coef: Float[Tensor, "n_layers n_heads"]
    intercept: float
    alpha: float
    method: str
    pearson_r: float
    r2: float
    n_train: int
    n_test: int
    alphas: Float[Tensor, " n_alphas"] | None = None
    val_mse: Float[Tensor, " n_alphas"] | None = None
    example_intercepts: Float[Tensor, " n_examples"] | None = None

    @property
    def importance(self) -> Float[Tensor, "n_layers n_heads"]:
        """``-coef``: large = ablating the head lowers the metric most."""
        return -self.coef

    def predict(
        self, masks: Bool[Tensor, "*batch n_layers n_heads"], example: int | None = None
    ) -> Float[Tensor, "*batch"]:
        """Predicted metric of ablation masks; ``example`` picks a pooled fit's intercept."""
        x = masks.reshape(*masks.shape[:-2], -1).to(self.coef.device, torch.float64)
        b0 = self.intercept if example is None else self.example_intercepts[example]
        return x @ self.coef.reshape(-1) + b0


def sample_masks(
    n_masks: int, n_layers: int, n_heads: int, rate: float = 0.05, seed: int = 0, device=None
) -> Bool[Tensor, "n_masks n_layers n_heads"]:
    """Random ablation masks: each head ablated independently with probability ``rate``.

    Args:
        n_masks: Number of masks.
        n_layers: Layers of the model.
        n_heads: Query heads per layer.
        rate: Ablation probability in (0, 1); 0.05 is COAR's default.
        seed: Seed of the CPU generator (same masks on every device).
        device (torch.device | str | None): Where to put the masks (default: CPU).

    Returns:
        ``True`` where a head is ablated.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    if min(n_masks, n_layers, n_heads) <= 0:
        raise ValueError(f"sizes must be positive, got {n_masks=}, {n_layers=}, {n_heads=}")
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((n_masks, n_layers, n_heads), generator=gen) < rate).to(device)


def _n_held(counts: Tensor, frac: float) -> Tensor:
    """Rows held out of groups of ``counts`` rows (the rounding every split uses)."""
    return (frac * counts).round()


def _split(g: Tensor, n_groups: int, frac: float, gen: torch.Generator):
    """Random split of row indices into (kept, held-out), stratified by group."""
    perm = torch.randperm(len(g), generator=gen).to(g.device)
    perm = perm[torch.argsort(g[perm], stable=True)]  # grouped, shuffled within groups
    counts = torch.bincount(g, minlength=n_groups)
    rank = torch.arange(len(g), device=g.device) - (counts.cumsum(0) - counts)[g[perm]]
    held = rank < _n_held(counts, frac)[g[perm]]
    return perm[~held], perm[held]


def split_sizes(n_masks: int, method: Method = "ridge", holdout: float = 0.2) -> dict[str, int]:
    """How a fit splits one example's masks: ``fit``, ``validation`` (penalty choice; 0 for
    OLS) and ``held_out`` (reported r / R²), with the default penalty grid."""
    held = int(_n_held(torch.tensor(n_masks), holdout))
    val = 0 if method == "ols" else int(_n_held(torch.tensor(n_masks - held), VAL_FRACTION))
    return {"fit": n_masks - held - val, "validation": val, "held_out": held}


def min_masks(method: Method = "ridge", holdout: float = 0.2, n_features: int = 0) -> int:
    """Fewest masks per example whose fit is defined and whose quality can be measured.

    The held-out split needs :data:`MIN_HELDOUT` masks (unless ``holdout`` is 0), ridge and
    lasso need one validation mask and two to fit, OLS one more than ``n_features`` to fit.

    Args:
        method: ``"ridge"``, ``"ols"`` or ``"lasso"``.
        holdout: Share of masks held out (as in :func:`fit_linear`).
        n_features: Heads in the model (only OLS depends on it).
    """
    need_train = _min_train(method, n_features)
    n = 2
    while True:
        s = split_sizes(n, method, holdout)
        held_ok = holdout == 0 or s["held_out"] >= MIN_HELDOUT
        val_ok = method == "ols" or s["validation"] >= 1
        if held_ok and val_ok and s["fit"] + s["validation"] >= need_train:
            return n
        n += 1


def _min_train(method: str, n_features: int, n_groups: int = 1) -> int:
    """Fewest training masks (fit + validation) a fit over ``n_groups`` examples needs: OLS one
    per head plus one per intercept, ridge / lasso two per example to fit and one to validate."""
    return n_features + n_groups if method == "ols" else 2 * n_groups + 1


def check_n_masks(n_masks: int, method: Method = "ridge", holdout: float = 0.2,
                  n_features: int = 0) -> None:
    """Refuse fewer masks per example than :func:`min_masks` (the one check of the mask count,
    made before any forward pass; a direct :func:`fit_pooled` call checks the same rule on its
    training split).

    Raises:
        OptionError: (field ``n_masks``) with the split the fewest masks would give.
    """
    need = min_masks(method, holdout, n_features)
    if n_masks < need:
        parts = split_sizes(need, method, holdout)
        split = ", ".join(f"{v} {k.replace('_', '-')}" for k, v in parts.items() if v)
        ols = f"OLS over {n_features} heads needs more than {n_features} training masks; "
        raise OptionError(
            "n_masks",
            f"must be >= {need} for a {method} fit ({ols * (method == 'ols')}"
            f"per example: {split} masks), got {n_masks}",
        )


def _center(x: Tensor, y: Tensor, g: Tensor, n_groups: int):
    counts = torch.bincount(g, minlength=n_groups).to(x.dtype)
    xm = x.new_zeros(n_groups, x.shape[1]).index_add_(0, g, x) / counts[:, None]
    ym = y.new_zeros(n_groups).index_add_(0, g, y) / counts
    return xm, ym, x - xm[g], y - ym[g]


def _lambda_max(x: Tensor, y: Tensor, g: Tensor, n_groups: int) -> Tensor:
    """``max|Xᵀy|/n`` of the centred rows (the smallest λ with β = 0); the centred copy dies
    here, not at the end of the fit."""
    _, _, xc, yc = _center(x, y, g, n_groups)
    return (xc.T @ yc).abs().max() / len(x)


def _solve(x: Tensor, y: Tensor, g: Tensor, n_groups: int, method: str, alphas: Tensor):
    """Coefficients ``[n_alphas, p]`` and intercepts ``[n_alphas, n_groups]`` per penalty."""
    xm, ym, xc, yc = _center(x, y, g, n_groups)
    if method == "ridge":  # normal equations: p×p solves, cheap for any number of masks
        gram, xty, eye = xc.T @ xc, xc.T @ yc, torch.eye(x.shape[1]).to(x)
        coefs = torch.stack([torch.linalg.solve(gram + a * len(x) * eye, xty) for a in alphas])
    elif method == "lasso":
        coefs = lasso_path(xc.T @ xc / len(xc), xc.T @ yc / len(xc), alphas)
    else:  # OLS; heads never (or always) ablated are unidentifiable and get β = 0
        live = (xc != 0).any(0)
        driver = "gelsd" if x.device.type == "cpu" else None
        coefs = x.new_zeros(1, x.shape[1])
        coefs[0, live] = torch.linalg.lstsq(xc[:, live], yc[:, None], driver=driver).solution[:, 0]
    return coefs, ym[None] - coefs @ xm.T


def lasso_path(gram: Float[Tensor, "p p"], cov: Float[Tensor, " p"], lams: Float[Tensor, " n"],
               max_iter: int = 5000, tol: float = 1e-9) -> Float[Tensor, "n p"]:
    """FISTA on ``mean((y - Xβ)²)/2 + λ|β|₁`` for each λ of ``lams``, warm-started from the
    largest λ down, given the centred ``XᵀX/n`` (``gram``) and ``Xᵀy/n`` (``cov``)."""
    step = 1.0 / torch.linalg.eigvalsh(gram)[-1].clamp_min(1e-12)
    beta, out = gram.new_zeros(gram.shape[1]), gram.new_empty(len(lams), gram.shape[1])
    order = torch.argsort(lams, descending=True).tolist()
    for i in progress_bar(order, desc="lasso path", show=None):
        z, t = beta.clone(), 1.0
        for it in range(max_iter):
            new = z - step * (gram @ z - cov)
            new = new.sign() * (new.abs() - lams[i] * step).clamp_min(0)
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            z, delta = new + (t - 1) / t_new * (new - beta), (new - beta).abs().max()
            beta, t = new, t_new
            if it % 10 == 0 and delta <= tol * max(1.0, beta.abs().max().item()):
                break
        out[i] = beta
    return out


#: The regressors a fit can use.
METHODS = ("ridge", "ols", "lasso")


def check_method(method: str) -> None:
    """Refuse a regressor that is not one of :data:`METHODS` (the one check of it)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use 'ridge', 'ols' or 'lasso'")


@dataclass(frozen=True)
class FitSettings:
    """How a linear fit is made (see :func:`fit_linear` for each field)."""

    method: str = "ridge"
    alphas: Sequence[float] | Tensor | None = None
    holdout: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        check_method(self.method)
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")


def check_train(n_train: int, method: str, n_features: int, n_groups: int,
                holdout: float) -> None:
    """Refuse a training split too small for the fit (OLS: one mask per head, plus one per
    intercept), with the mask count that suffices."""
    min_train = _min_train(method, n_features, n_groups)
    if n_train < min_train:
        need = math.ceil(min_train / (1 - holdout))
        msg = f"{method} needs >= {min_train} training masks (n_features={n_features}), " \
              f"got {n_train}"  # fmt: skip
        hint = " or use method='ridge'" if method == "ols" else ""
        raise ValueError(f"{msg}; sample >= {need} masks (holdout={holdout}){hint}")


def penalty_grid(method: str, alphas: Sequence[float] | Tensor | None) -> Tensor:
    """The float64 penalties a ridge / lasso fit searches (the default grid if ``alphas`` is
    None; lasso's default is fractions of ``λ_max``)."""
    default = DEFAULT_RIDGE_ALPHAS if method == "ridge" else DEFAULT_LASSO_FRACTIONS
    grid = torch.as_tensor(default if alphas is None else alphas, dtype=torch.float64).flatten()
    if len(grid) == 0 or (grid <= 0).any():
        raise ValueError(f"alphas must be positive, got {grid.tolist()}")
    return grid


def _fit(x, y, g, n_groups: int, shape, settings: FitSettings) -> LinearFit:
    s = settings
    method, alphas, holdout, seed = s.method, s.alphas, s.holdout, s.seed
    x, y, p = x.to(torch.float64), y.to(x.device, torch.float64), x.shape[1]
    train, test = _split(g, n_groups, holdout, gen := torch.Generator().manual_seed(seed))
    check_train(len(train), method, p, n_groups, holdout)
    grid, val_mse, alpha = None, None, 0.0
    if method != "ols":
        grid = penalty_grid(method, alphas).to(x.device)
        sub, val = _split(g[train], n_groups, VAL_FRACTION if len(grid) > 1 else 0.0, gen)
        sub, val = train[sub], train[val]
        if method == "lasso" and alphas is None:  # fractions of λ_max
            grid = grid * _lambda_max(x[sub], y[sub], g[sub], n_groups)
        alpha = grid[0].item()
        if len(grid) > 1:
            coefs, b0 = _solve(x[sub], y[sub], g[sub], n_groups, method, grid)
            val_mse = ((x[val] @ coefs.T + b0[:, g[val]].T - y[val, None]) ** 2).mean(0)
            alpha = grid[int(torch.argmin(val_mse))].item()
    coefs, b0 = _solve(x[train], y[train], g[train], n_groups, method, x.new_tensor([alpha]))
    r = r2 = math.nan  # held-out scores, within example (values centred per example)
    if len(test) > 1:
        pred, yt = x[test] @ coefs[0] + b0[0, g[test]], y[test]
        _, _, c, _ = _center(torch.stack([yt, pred], 1), yt, g[test], n_groups)
        r = (c[:, 0] @ c[:, 1] / (c[:, 0].norm() * c[:, 1].norm())).item()
        r2 = (1 - ((yt - pred) ** 2).sum() / (c[:, 0] ** 2).sum()).item()
    args = (coefs[0].reshape(shape), b0[0].mean().item(), alpha, method, r, r2, len(train))
    return LinearFit(*args, len(test), grid, val_mse, b0[0] if n_groups > 1 else None)


def fit_linear(
    masks: Bool[Tensor, "n_masks n_layers n_heads"],
    targets: Float[Tensor, " n_masks"],
    method: Method = "ridge",
    alphas: Sequence[float] | Tensor | None = None,
    holdout: float = 0.2,
    seed: int = 0,
) -> LinearFit:
    """Fit ``targets ≈ β₀ + Σ_h β_h masks_h`` for one example.

    Args:
        masks: Ablation masks, ``True`` = head ablated.
        targets: Metric (e.g. answer logit) of each masked run.
        method: ``"ridge"`` (default; stable with few or many masks, λ → 0 is OLS), ``"ols"``
            (``torch.linalg.lstsq``; needs ``n_train >= n_layers*n_heads + 1``) or ``"lasso"``
            (sparse β, FISTA).
        alphas: Penalty grid, chosen by inner-validation MSE; one value skips the search.
            Ridge: α of ``mean((y - Xβ)²) + α|β|²``, default ``1e-4 … 1e3``. Lasso: λ of
            ``mean((y - Xβ)²)/2 + λ|β|₁``, default ``λ_max · (1e-4 … 1)``. Ignored by OLS.
        holdout: Fraction of masks held out for the reported r / R², in [0, 1).
        seed: Seed of the train / held-out / validation splits.

    Returns:
        The fit.
    """
    return fit_pooled([masks], [targets], method, alphas, holdout, seed)


def fit_pooled(
    masks_list: Sequence[Bool[Tensor, "n_masks n_layers n_heads"]],
    targets_list: Sequence[Float[Tensor, " n_masks"]],
    method: Method = "ridge",
    alphas: Sequence[float] | Tensor | None = None,
    holdout: float = 0.2,
    seed: int = 0,
) -> LinearFit:
    """One set of head coefficients shared by several examples, each with its own intercept.

    Per-example intercepts come from centring features and targets *within* each example (train
    masks' means): the same solution as unpenalised one-hot example columns, without the columns.
    Splits are stratified per example; held-out r / R² are within example (values centred per
    example), so differing baselines do not inflate them.

    Args:
        masks_list: Per example, its ablation masks (counts may differ; may be shared).
        targets_list: Per example, the metric of each masked run.
        method: As in :func:`fit_linear`.
        alphas: As in :func:`fit_linear`.
        holdout: As in :func:`fit_linear`.
        seed: As in :func:`fit_linear`.

    Returns:
        The fit, with ``example_intercepts`` ``[n_examples]``.
    """
    if not 0 < len(masks_list) == len(targets_list):
        raise ValueError(f"got {len(masks_list)} mask sets but {len(targets_list)} target sets")
    for m, t in zip(masks_list, targets_list, strict=True):
        if m.dtype != torch.bool or m.ndim != 3 or m.shape[1:] != masks_list[0].shape[1:]:
            shapes = f"{m.dtype} {tuple(m.shape)} (first: {tuple(masks_list[0].shape)})"
            raise ValueError(f"masks must be bool [n_masks, n_layers, n_heads], got {shapes}")
        if t.shape != m.shape[:1] or not torch.isfinite(t).all():
            raise ValueError(f"targets must be finite [n_masks={len(m)}], got {tuple(t.shape)}")
    dev = masks_list[0].device
    x = torch.cat([m.flatten(1).to(dev) for m in masks_list])
    y = torch.cat([t.to(dev, torch.float64) for t in targets_list])
    g = torch.cat([torch.full((len(t),), i, device=dev) for i, t in enumerate(targets_list)])
    settings = FitSettings(method, alphas, holdout, seed)
    return _fit(x, y, g, len(masks_list), m.shape[1:], settings)


def fit_memory(n_masks: int, n_features: int, n_examples: int = 1, method: Method = "ridge",
               holdout: float = 0.2) -> int:
    """Upper bound, in bytes, on the peak memory :func:`fit_pooled` adds over ``n_examples``
    examples of ``n_masks`` masks each (one example: :func:`fit_linear`), read from its code.
    A run fits chunk by chunk instead (its bound:
    :func:`~lvlm_lens.attribution.chunked_fit.chunked_fit_memory`).

    Per row of the stacked masks: the bool copy (1 byte per head) and its float64 copy (8);
    per training row, the final solve's float64 copies: ``x[train]``, the centring's gather
    and centred result (3; lasso's penalty-search copy for ``λ_max`` is freed before it), OLS
    also copies the ``live`` columns and LAPACK copies them again (5); per row ~20 index /
    target / group vectors (8 bytes each); a few ``p × p`` Gram / solve matrices.
    """
    n_rows, p = n_masks * n_examples, n_features
    n_train = n_examples * (n_masks - split_sizes(n_masks, method, holdout)["held_out"])
    copies = {"ridge": 3, "lasso": 3, "ols": 5}[method]
    return n_rows * (9 * p + 160) + n_train * 8 * p * copies + 5 * 8 * p * p
