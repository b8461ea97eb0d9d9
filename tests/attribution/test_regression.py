"""Head-attribution regression: planted coefficients, seeds, pooled fits, error messages."""

from __future__ import annotations

import math

import pytest
import torch

from lvlm_lens.attribution.regression import (
    DEFAULT_RIDGE_ALPHAS,
    LinearFit,
    _split,
    fit_linear,
    fit_pooled,
    sample_masks,
)

L, H = 4, 8


def planted(n=1500, rate=0.1, seed=0, noise=0.05, intercept=3.0, sparse=False):
    gen = torch.Generator().manual_seed(100)  # same planted β for every mask seed
    beta = -torch.rand(L, H, generator=gen) * 2  # ablation lowers the metric
    if sparse:
        beta[torch.rand(L, H, generator=gen) < 0.7] = 0
    masks = sample_masks(n, L, H, rate=rate, seed=seed)
    y = intercept + (masks.double() * beta).sum((1, 2))
    y = y + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    return masks, y.float(), beta.double()


@pytest.mark.parametrize("method", ["ridge", "ols", "lasso"])
def test_planted_coefficients_recovered(method):
    masks, y, beta = planted(sparse=method == "lasso")
    fit = fit_linear(masks, y, method=method)
    assert isinstance(fit, LinearFit) and fit.method == method
    assert fit.coef.shape == (L, H) and fit.coef.dtype == torch.float64
    assert fit.pearson_r > 0.99 and fit.r2 > 0.98
    torch.testing.assert_close(fit.coef, beta, atol=0.03, rtol=0)
    assert abs(fit.intercept - 3.0) < 0.02
    assert (fit.n_train, fit.n_test) == (1200, 300)
    torch.testing.assert_close(fit.importance, -fit.coef)
    new = sample_masks(50, L, H, rate=0.1, seed=7)
    truth = 3.0 + (new.double() * beta).sum((1, 2))
    torch.testing.assert_close(fit.predict(new), truth, atol=0.1, rtol=0)
    if method == "ols":
        assert fit.alpha == 0.0 and fit.alphas is None
    else:
        assert fit.alpha in fit.alphas.tolist() and fit.val_mse.shape == fit.alphas.shape


def test_lasso_zeroes_absent_heads():
    masks, y, beta = planted(sparse=True)
    fit = fit_linear(masks, y, method="lasso")
    assert (fit.coef[beta == 0].abs() < 0.02).all()
    assert (fit.coef[beta == 0] == 0).float().mean() > 0.3  # exact zeros: a sparse solution


def test_ridge_penalty_shrinks_and_single_alpha_skips_search():
    masks, y, _ = planted(n=400)
    weak = fit_linear(masks, y, alphas=[1e-6])
    strong = fit_linear(masks, y, alphas=[1e3])
    assert weak.alpha == 1e-6 and weak.val_mse is None
    assert strong.coef.abs().max() < 0.01 * weak.coef.abs().max()


def test_heldout_masks_are_untouched():
    masks, y, _ = planted(n=500)
    _, test = _split(torch.zeros(500, dtype=torch.long), 1, 0.2, torch.Generator().manual_seed(3))
    corrupted = y.clone()
    corrupted[test] = 1e3
    for method in ("ridge", "lasso"):
        a, b = fit_linear(masks, y, method, seed=3), fit_linear(masks, corrupted, method, seed=3)
        assert torch.equal(a.coef, b.coef) and a.alpha == b.alpha and b.r2 < 0


def test_seeds_reproducible():
    a, b = sample_masks(100, L, H, 0.2, seed=1), sample_masks(100, L, H, 0.2, seed=1)
    assert a.dtype == torch.bool and a.shape == (100, L, H) and torch.equal(a, b)
    assert not torch.equal(a, sample_masks(100, L, H, 0.2, seed=2))
    assert abs(sample_masks(4000, L, H, 0.05).float().mean().item() - 0.05) < 0.005
    masks, y, _ = planted(n=400)
    f1, f2 = fit_linear(masks, y, seed=5), fit_linear(masks, y, seed=5)
    assert torch.equal(f1.coef, f2.coef) and f1.pearson_r == f2.pearson_r
    assert not torch.equal(f1.coef, fit_linear(masks, y, seed=6).coef)


def test_no_holdout_gives_nan_scores():
    masks, y, _ = planted(n=300)
    fit = fit_linear(masks, y, holdout=0.0)
    assert fit.n_test == 0 and fit.n_train == 300
    assert math.isnan(fit.pearson_r) and math.isnan(fit.r2)


def test_ols_never_ablated_head_gets_zero():
    masks, y, _ = planted(n=400)
    masks[:, 0, 0] = False
    fit = fit_linear(masks, y, method="ols")
    assert fit.coef[0, 0] == 0 and fit.pearson_r > 0.99


def test_pooled_fit_shares_coefficients():
    masks_list, targets, b0 = [], [], [1.0, 5.0, -2.0]
    for i, b in enumerate(b0):
        m, y, beta = planted(n=600, seed=i, intercept=b)
        masks_list.append(m)
        targets.append(y)
    fit = fit_pooled(masks_list, targets)
    torch.testing.assert_close(fit.coef, beta, atol=0.03, rtol=0)
    torch.testing.assert_close(fit.example_intercepts, torch.tensor(b0).double(), atol=0.03, rtol=0)
    assert fit.pearson_r > 0.99 and fit.n_train + fit.n_test == 1800
    assert abs(fit.intercept - sum(b0) / 3) < 0.03
    pred = fit.predict(masks_list[1], example=1)
    assert torch.corrcoef(torch.stack([pred, targets[1].double()]))[0, 1] > 0.99


def test_pooled_centring_equals_onehot_intercepts():
    masks_list = [sample_masks(80, 2, 3, 0.3, seed=s) for s in range(3)]
    targets = [torch.randn(80, generator=torch.Generator().manual_seed(s)) + s for s in range(3)]
    fit = fit_pooled(masks_list, targets, method="ols", holdout=0.0)
    x = torch.cat([m.flatten(1).double() for m in masks_list])
    onehot = torch.repeat_interleave(torch.eye(3, dtype=torch.float64), 80, dim=0)
    sol = torch.linalg.lstsq(torch.cat([x, onehot], 1), torch.cat(targets).double()[:, None])
    torch.testing.assert_close(fit.coef.flatten(), sol.solution[:6, 0])
    torch.testing.assert_close(fit.example_intercepts, sol.solution[6:, 0])


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_rate_outside_unit_interval(rate):
    with pytest.raises(ValueError, match="rate"):
        sample_masks(10, L, H, rate=rate)


def test_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        sample_masks(0, L, H)


def test_ols_needs_enough_masks():
    masks, y, _ = planted(n=30)  # 24 train masks < 32 heads + 1
    msg = r"ols needs >= 33 .*sample >= 42 .* or use method='ridge'"
    with pytest.raises(ValueError, match=msg):
        fit_linear(masks, y, method="ols")
    fit_linear(masks, y, method="ridge")  # ridge copes with n < p


def test_shape_and_option_errors():
    masks, y, _ = planted(n=50)
    with pytest.raises(ValueError, match="targets"):
        fit_linear(masks, y[:-1])
    with pytest.raises(ValueError, match="targets"):
        fit_linear(masks, y.reshape(50, 1))
    with pytest.raises(ValueError, match="finite"):
        fit_linear(masks, torch.where(y > y.median(), torch.nan, y))
    with pytest.raises(ValueError, match="bool"):
        fit_linear(masks.float(), y)
    with pytest.raises(ValueError, match="bool"):
        fit_linear(masks.flatten(1), y)
    with pytest.raises(ValueError, match="bool"):
        fit_pooled([masks, masks[:, :2]], [y, y])
    with pytest.raises(ValueError, match="2 mask sets but 1"):
        fit_pooled([masks, masks], [y])
    with pytest.raises(ValueError, match="method"):
        fit_linear(masks, y, method="svm")
    with pytest.raises(ValueError, match="holdout"):
        fit_linear(masks, y, holdout=1.0)
    with pytest.raises(ValueError, match="alphas"):
        fit_linear(masks, y, alphas=[1.0, -1.0])


def test_held_out_scores_by_hand():
    """Pearson r and R² on the held-out masks, recomputed from the fit's own predictions."""
    masks, y, _ = planted(n=200, noise=0.5)
    fit = fit_linear(masks, y, seed=3)
    _, test = _split(torch.zeros(200, dtype=torch.long), 1, 0.2, torch.Generator().manual_seed(3))
    pred, truth = fit.predict(masks[test]), y[test].double()
    r = torch.corrcoef(torch.stack([pred, truth]))[0, 1]
    r2 = 1 - ((truth - pred) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert fit.pearson_r == pytest.approx(float(r), abs=1e-9)
    assert fit.r2 == pytest.approx(float(r2), abs=1e-9)
    assert 0.3 < fit.r2 < fit.pearson_r < 0.99  # noisy enough to tell r, r² and 1 apart


def test_ridge_and_lasso_with_one_penalty_by_hand():
    """Ridge: the closed form on centred data. Lasso on an orthogonal design (every
    combination of 3 heads, each ablated in half the masks): soft-thresholding of Xᵀy/n."""
    masks, y, _ = planted(n=300, noise=0.3)
    x = masks.flatten(1).double()
    fit = fit_linear(masks, y, alphas=[0.5], holdout=0.0)
    xc, yc = x - x.mean(0), y.double() - y.double().mean()
    want = torch.linalg.solve(xc.T @ xc + 0.5 * len(x) * torch.eye(x.shape[1]).double(), xc.T @ yc)
    torch.testing.assert_close(fit.coef.flatten(), want)
    assert fit.intercept == pytest.approx(float(y.double().mean() - x.mean(0) @ want))
    grid = torch.tensor([[(i >> b) & 1 for b in range(3)] for i in range(8)], dtype=torch.bool)
    design = grid.repeat(4, 1).reshape(32, 1, 3)
    beta = torch.tensor([-2.0, -0.2, 1.0], dtype=torch.float64)
    target = 1.0 + design.flatten(1).double() @ beta
    lam = 0.1
    lasso = fit_linear(design, target, method="lasso", alphas=[lam], holdout=0.0)
    d = design.flatten(1).double()
    cov = (d - d.mean(0)).T @ (target - target.mean()) / len(d)  # = beta / 4
    soft = cov.sign() * (cov.abs() - lam).clamp_min(0) / 0.25  # Gram / n = I / 4
    torch.testing.assert_close(lasso.coef.flatten(), soft, atol=1e-7, rtol=0)
    assert lasso.coef[0, 1] == 0 and lasso.alpha == lam


def test_penalty_search_picks_the_best_validation_penalty_in_any_order():
    masks, y, _ = planted(n=400, noise=0.01)
    for grid in ([1e3, 1e-6], [1e-6, 1e3]):
        fit = fit_linear(masks, y, alphas=grid)
        assert fit.alpha == 1e-6 and fit.val_mse.shape == (2,)
        assert fit.val_mse[grid.index(1e-6)] < fit.val_mse[grid.index(1e3)]
    default = fit_linear(masks, y)
    assert default.alphas.tolist() == list(DEFAULT_RIDGE_ALPHAS)
    with pytest.raises(ValueError, match="alphas must be positive"):
        fit_linear(masks, y, alphas=[0.0])


def test_stratified_split_and_minimum_masks():
    """Held-out masks are 20 % of each example's masks; ridge needs 2 per example + 1."""
    sizes = (10, 30)
    masks = [sample_masks(n, L, H, 0.2, seed=n) for n in sizes]
    targets = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in sizes]
    fit = fit_pooled(masks, targets, alphas=[1.0])
    assert (fit.n_train, fit.n_test) == (8 + 24, 2 + 6)
    assert fit.example_intercepts.shape == (2,)
    assert fit_linear(masks[0], targets[0]).example_intercepts is None
    fit_linear(masks[0][:3], targets[0][:3], alphas=[1.0], holdout=0.0)  # 3 = 2 + 1: enough
    with pytest.raises(ValueError, match=r"ridge needs >= 3 training masks.*\(holdout=0.0\)$"):
        fit_linear(masks[0][:2], targets[0][:2], alphas=[1.0], holdout=0.0)
    with pytest.raises(ValueError, match="ridge needs >= 5 training masks"):
        fit_pooled([m[:2] for m in masks], [t[:2] for t in targets], alphas=[1.0], holdout=0.0)
    with pytest.raises(ValueError, match="got 0 mask sets but 0"):
        fit_pooled([], [])
    one = fit_linear(masks[1][:11], targets[1][:11], alphas=[1.0], holdout=0.1)
    assert one.n_test == 1 and math.isnan(one.pearson_r) and math.isnan(one.r2)
    two = fit_linear(masks[1][:10], targets[1][:10], alphas=[1.0], holdout=0.2)
    assert two.n_test == 2 and abs(two.pearson_r) == pytest.approx(1.0)  # two points: |r| = 1


def test_predict_uses_the_examples_own_intercept():
    masks_list = [sample_masks(100, L, H, 0.2, seed=s) for s in range(2)]
    targets = [torch.randn(100, generator=torch.Generator().manual_seed(s)) + 5 * s
               for s in range(2)]  # fmt: skip
    fit = fit_pooled(masks_list, targets)
    x = masks_list[0][:7]
    lin = x.flatten(1).double() @ fit.coef.flatten()
    torch.testing.assert_close(fit.predict(x, example=1), lin + fit.example_intercepts[1])
    torch.testing.assert_close(fit.predict(x), lin + fit.intercept)
    assert fit.example_intercepts[1] - fit.example_intercepts[0] > 3


@pytest.mark.parametrize(("method", "holdout"), [("ridge", 0.2), ("lasso", 0.3), ("ols", 0.2)])
def test_min_masks_is_the_fewest_a_fit_measures(method, holdout):
    from lvlm_lens.attribution.head_attribution import AttributionConfig
    from lvlm_lens.attribution.regression import MIN_HELDOUT, check_n_masks, min_masks, split_sizes
    from lvlm_lens.errors import OptionError

    n = min_masks(method, holdout, L * H)
    assert split_sizes(n, method, holdout)["held_out"] >= MIN_HELDOUT
    masks, y, _ = planted(n, rate=0.3, noise=0.3)
    fit = fit_linear(masks, y, method=method, holdout=holdout)
    assert fit.n_test == split_sizes(n, method, holdout)["held_out"]
    assert math.isfinite(fit.r2)
    # lasso may zero every β on so few masks: a constant prediction has no r (the job says so)
    assert math.isfinite(fit.pearson_r) or (method == "lasso" and not fit.coef.any())
    AttributionConfig(n_masks=n, method=method, holdout=holdout)
    check_n_masks(n, method, holdout, L * H)  # the fit above ran on exactly this many
    with pytest.raises(OptionError, match=f"n_masks must be >= {n} ") as err:
        check_n_masks(n - 1, method, holdout, L * H)
    assert err.value.field == "n_masks"


def test_split_sizes_and_min_masks_by_hand():
    """100 masks, holdout 0.2: 20 held out; ridge / lasso keep 20 % of the other 80 (16) to
    choose the penalty; OLS fits on all 80. The minimum is the first n whose split holds >= 3
    out (0.2·13 = 2.6 rounds to 3), validates on >= 1 and fits >= 2 (OLS: heads + 1)."""
    from lvlm_lens.attribution.regression import min_masks, split_sizes

    assert split_sizes(100) == {"fit": 64, "validation": 16, "held_out": 20}
    assert split_sizes(100, "lasso", 0.1) == {"fit": 72, "validation": 18, "held_out": 10}
    assert split_sizes(100, "ols") == {"fit": 80, "validation": 0, "held_out": 20}
    assert min_masks() == min_masks("lasso") == 13
    assert min_masks("ols", n_features=12) == 16  # 3 held out, 13 to fit
    assert min_masks("ridge", 0.0) == 3  # 1 to validate (0.2·3 = 0.6), 2 to fit
    assert min_masks("ols", 0.0) == 2 and min_masks("ols", 0.0, n_features=12) == 13
    assert min_masks("ols", 0.7) == 4  # 0.7·4 = 2.8: 3 held out, 1 to fit


def test_defaults_and_bounds_of_sampling_and_pooling():
    assert torch.equal(sample_masks(50, 2, 3), sample_masks(50, 2, 3, 0.05, seed=0))
    assert sample_masks(1, 1, 1, rate=0.5).shape == (1, 1, 1)
    for sizes in ((0, 2, 3), (5, 0, 3), (5, 2, 0)):
        with pytest.raises(ValueError, match="sizes must be positive"):
            sample_masks(*sizes)
    masks, y, _ = planted(n=60, noise=0.5)
    a, b = fit_pooled([masks, masks], [y, y.flip(0)]), fit_pooled([masks, masks], [y, y.flip(0)],
                                                                   seed=0)  # fmt: skip
    torch.testing.assert_close(a.coef, b.coef)


def test_lasso_default_grid_is_a_fraction_of_lambda_max():
    """λ_max = max|Xᵀy|/n (centred train masks) scales the default fractions."""
    from lvlm_lens.attribution.regression import DEFAULT_LASSO_FRACTIONS

    masks, y, _ = planted(n=400, noise=0.1)
    fit = fit_linear(masks, y, method="lasso", holdout=0.0)
    ratio = fit.alphas / torch.tensor(DEFAULT_LASSO_FRACTIONS, dtype=torch.float64)
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))
    x = masks.flatten(1).double()
    lam_max = ((x - x.mean(0)).T @ (y.double() - y.double().mean())).abs().max() / len(x)
    assert 0.8 < ratio[0] / lam_max < 1.2  # on the 80 % of masks that choose the penalty


def test_pooled_held_out_scores_are_within_example_by_hand():
    """Three examples with intercepts 0, 40 and -25 and one shared β: held-out r and R² centre
    truth and prediction per example (over its held-out masks), computed here example by
    example. Fails with the pooled variance (``truth - truth.mean()`` over all examples: the
    intercepts' spread makes R² ~ 1) or a pooled correlation (r ~ 1), or if each example's
    prediction used the mean intercept."""
    gen = torch.Generator().manual_seed(100)
    beta = -torch.rand(L, H, generator=gen, dtype=torch.float64)
    masks = [sample_masks(60, L, H, 0.2, seed=s) for s in range(3)]
    targets = [b0 + (m.double() * beta).sum((1, 2))
               + 1.0 * torch.randn(60, generator=gen, dtype=torch.float64)
               for b0, m in zip((0.0, 40.0, -25.0), masks, strict=True)]
    fit = fit_pooled(masks, targets, alphas=[1e-3], seed=5)
    g = torch.arange(3).repeat_interleave(60)
    _, test = _split(g, 3, 0.2, torch.Generator().manual_seed(5))
    assert fit.n_test == len(test) == 36
    num = ss_t = ss_p = ss_res = 0.0
    truths, preds = [], []
    for i in range(3):
        rows = test[g[test] == i] - 60 * i
        truth, pred = targets[i][rows], fit.predict(masks[i][rows], example=i)
        ct, cp = truth - truth.mean(), pred - pred.mean()
        num, ss_t, ss_p = num + (ct * cp).sum(), ss_t + (ct**2).sum(), ss_p + (cp**2).sum()
        ss_res += ((truth - pred) ** 2).sum()
        truths.append(truth)
        preds.append(pred)
    r, r2 = float(num / (ss_t * ss_p) ** 0.5), float(1 - ss_res / ss_t)
    assert fit.pearson_r == pytest.approx(r, abs=1e-9)
    assert fit.r2 == pytest.approx(r2, abs=1e-9)
    truth, pred = torch.cat(truths), torch.cat(preds)
    pooled_r2 = float(1 - ss_res / ((truth - truth.mean()) ** 2).sum())
    pooled_r = float(torch.corrcoef(torch.stack([truth, pred]))[0, 1])
    assert 0.2 < fit.r2 < pooled_r2 - 0.1 and fit.pearson_r < pooled_r - 0.05
    assert fit.example_intercepts.tolist() == pytest.approx([0.0, 40.0, -25.0], abs=1.0)


def test_fit_settings_check_the_method_and_holdout_in_one_place():
    from lvlm_lens.attribution.head_attribution import AttributionConfig
    from lvlm_lens.attribution.regression import FitSettings

    for make in (lambda: FitSettings(method="svm"), lambda: AttributionConfig(method="svm")):
        with pytest.raises(ValueError, match="unknown method 'svm'; use 'ridge', 'ols' or 'lasso'"):
            make()
    with pytest.raises(ValueError, match=r"holdout must be in \[0, 1\), got 1.0"):
        FitSettings(holdout=1.0)
    assert FitSettings() == FitSettings("ridge", None, 0.2, 0)


def test_lasso_frees_the_penalty_search_copy_before_the_final_solve(monkeypatch):
    """λ_max's centred copy of the penalty-search rows (0.64 x rows x heads float64) must be gone
    when the final solve starts: it used to live to the end of the fit, raising its peak."""
    import weakref

    import lvlm_lens.attribution.regression as reg

    copies, alive = [], []
    real_center, real_solve = reg._center, reg._solve

    def center(*args):
        out = real_center(*args)
        copies.extend(weakref.ref(t) for t in out[2:])  # the centred rows and targets
        return out

    def solve(x, y, g, n_groups, method, alphas):
        if len(alphas) == 1:  # the final solve, after the penalty search
            alive.append(sum(ref() is not None for ref in copies))
        return real_solve(x, y, g, n_groups, method, alphas)

    monkeypatch.setattr(reg, "_center", center)
    monkeypatch.setattr(reg, "_solve", solve)
    masks, y, _ = planted(n=300, sparse=True)
    fit = fit_linear(masks, y, method="lasso")
    assert len(fit.alphas) > 1 and copies and alive == [0]
