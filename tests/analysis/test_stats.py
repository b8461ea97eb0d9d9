"""Bootstrap CIs, permutation tests and rank correlation against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from lvlm_lens.analysis.stats import (
    Estimate,
    bootstrap_ci,
    bootstrap_ratio,
    ci_table,
    pearson,
    permutation_test,
    rankdata,
    sign_flip_test,
    sign_test,
    spearman,
)


def test_bootstrap_ci_covers_the_mean_and_is_seeded():
    x = np.random.default_rng(0).normal(2.0, 1.0, 200)
    est = bootstrap_ci(x, seed=1)
    assert est.value == pytest.approx(x.mean())
    se = x.std(ddof=1) / np.sqrt(len(x))
    # percentile bootstrap of a mean ~ mean +- 1.96 se
    assert est.low == pytest.approx(x.mean() - 1.96 * se, abs=0.4 * se)
    assert est.high == pytest.approx(x.mean() + 1.96 * se, abs=0.4 * se)
    assert bootstrap_ci(x, seed=1) == est
    assert bootstrap_ci(x, seed=2) != est
    one = bootstrap_ci([3.0])
    assert (one.value, one.low, one.high, one.n) == (3.0, 3.0, 3.0, 1)


def test_bootstrap_ratio_matches_the_generic_bootstrap():
    rng = np.random.default_rng(0)
    num, den = rng.normal(1, 1, (3, 30)), rng.uniform(1, 2, 30)
    value, low, high = bootstrap_ratio(num, den, seed=4)
    np.testing.assert_allclose(value, num.sum(1) / den.sum())
    for r in range(3):
        rows = np.stack([num[r], den], 1)
        est = bootstrap_ci(rows, lambda a: a[:, 0].sum() / a[:, 1].sum(), seed=4)
        assert est.value == pytest.approx(value[r])
        assert low[r] < value[r] < high[r]


def test_sign_flip_and_permutation_tests():
    rng = np.random.default_rng(0)
    shifted = rng.normal(1.0, 1.0, 30)
    null = rng.normal(0.0, 1.0, 30)
    assert sign_flip_test(shifted, n_perm=2000) < 0.01
    assert sign_flip_test(-shifted, n_perm=2000) > 0.9
    assert sign_flip_test(-shifted, n_perm=2000, alternative="less") < 0.01
    assert permutation_test(shifted, null, n_perm=2000) < 0.01
    assert permutation_test(null, shifted, n_perm=2000) > 0.9
    # under the null, p-values are roughly uniform
    ps = [sign_flip_test(rng.normal(0, 1, 20), n_perm=500, seed=s) for s in range(40)]
    assert 0.3 < np.mean(ps) < 0.7


def test_spearman_and_ranks():
    x = np.array([0.1, 5.0, 2.0, 2.0, -1.0])
    np.testing.assert_array_equal(rankdata(x), [1, 4, 2.5, 2.5, 0])
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x**3) == pytest.approx(-1.0)


def test_ci_table_resamples_examples_not_rows():
    import pandas as pd

    frame = pd.DataFrame({"g": ["a"] * 6, "example": [0, 0, 0, 1, 1, 1],
                          "v": [1.0, 1.0, 1.0, 3.0, 3.0, 3.0]})
    t = ci_table(frame, ["g"], "v")
    assert t["mean"].item() == 2.0 and t["n"].item() == 2


# Known answers: exact p-values on enumerable cases, and every resampled statistic equal to the
# numpy computation on the same seeded draws (reproduced here, not taken from the module).


def _draws(seed: int, n_boot: int, n: int) -> np.ndarray:
    """The bootstrap indices every resampling function draws: ``default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_bootstrap_ci_is_the_quantile_of_the_seeded_resamples(level):
    """The CI ends are the ``(1 -+ level) / 2`` quantiles of the means of the same draws.

    Fails at the wrong level (``level / 2`` and ``1 - level / 2``, or ``1 - level`` and
    ``level``), without resampling (``x`` instead of ``x[idx]``) or with another seed."""
    x = np.array([0.0, 1.0, 4.0, 9.0, 16.0, 25.0, 36.0])
    est = bootstrap_ci(x, n_boot=400, level=level, seed=7)
    boots = x[_draws(7, 400, len(x))].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    assert (est.value, est.n, est.level) == (13.0, 7, level)
    assert est.low == pytest.approx(lo, abs=1e-12) and est.high == pytest.approx(hi, abs=1e-12)
    wrong = np.quantile(boots, [1 - level, level])
    assert abs(est.low - wrong[0]) > 0.1 and abs(est.high - wrong[1]) > 0.1


def test_bootstrap_ci_drops_nan_rows_and_resamples_whole_rows():
    """Rows with a NaN are dropped before drawing; a row statistic sees whole rows (fails if
    the NaN row is kept, or if the two columns are resampled independently)."""
    rows = np.array([[1.0, 2.0], [np.nan, 5.0], [3.0, 1.0], [2.0, 8.0], [6.0, 3.0]])
    kept = rows[[0, 2, 3, 4]]

    def ratio(a):
        return a[:, 0].sum() / a[:, 1].sum()

    est = bootstrap_ci(rows, ratio, n_boot=300, seed=2)
    boots = np.array([ratio(kept[i]) for i in _draws(2, 300, 4)])
    assert est.value == pytest.approx(12 / 14) and est.n == 4
    np.testing.assert_allclose([est.low, est.high], np.quantile(boots, [0.025, 0.975]))


def test_bootstrap_ratio_resamples_numerator_and_denominator_together():
    """``sum(num[idx]) / sum(den[idx])`` over the same draws (and equal to the generic
    bootstrap of the ratio). Fails if the denominator is not resampled (``/ den.sum()``):
    with a denominator that varies 1..10 the CI moves by far more than the tolerance."""
    num = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 0.0, -1.0, 2.0, 2.0]])
    den = np.array([1.0, 10.0, 2.0, 7.0, 3.0])
    value, low, high = bootstrap_ratio(num, den, n_boot=500, seed=5)
    np.testing.assert_allclose(value, [15 / 23, 8 / 23])
    idx = _draws(5, 500, 5)
    boots = num[:, idx].sum(-1) / den[idx].sum(-1)
    np.testing.assert_allclose(low, np.quantile(boots, 0.025, axis=1), rtol=1e-12)
    np.testing.assert_allclose(high, np.quantile(boots, 0.975, axis=1), rtol=1e-12)
    for r in range(2):
        ci = bootstrap_ci(np.stack([num[r], den], 1), lambda a: a[:, 0].sum() / a[:, 1].sum(),
                          n_boot=500, seed=5)
        assert (ci.low, ci.high) == pytest.approx((low[r], high[r]), abs=1e-12)
    fixed = num[:, idx].sum(-1) / den.sum()  # the planted bug: denominator not resampled
    assert np.abs(np.quantile(fixed, 0.975, axis=1) - high).max() > 0.1
    one = bootstrap_ratio([[2.0], [3.0]], [4.0])
    np.testing.assert_array_equal(one[0], [0.5, 0.75])
    np.testing.assert_array_equal(one[1], one[0])
    np.testing.assert_array_equal(one[2], one[0])


def _sign_flip_p(d, signs, alternative):
    """The p-value by its definition, ``(1 + #{perm at least as extreme}) / (1 + n_perm)``."""
    obs, perm = d.mean(), (signs * d).mean(-1)
    hits = {"greater": perm >= obs - 1e-9, "less": perm <= obs + 1e-9,
            "two-sided": np.abs(perm) >= abs(obs) - 1e-9}[alternative]
    return (1 + hits.sum()) / (1 + len(perm))


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_sign_flip_p_value_on_the_seeded_signs(alternative):
    """The count of the same random sign patterns, with the ``+1`` in numerator and
    denominator. Fails without the ``+1`` (p = 0 would be possible), with ``>`` instead of
    ``>=`` (the all-plus pattern ties with the observation) or the alternatives swapped."""
    d = np.array([0.5, 1.5, -0.25, 2.0, 1.0])
    signs = np.random.default_rng(3).choice([-1.0, 1.0], size=(64, len(d)))
    want = _sign_flip_p(d, signs, alternative)
    assert sign_flip_test(d, n_perm=64, seed=3, alternative=alternative) == pytest.approx(want)
    assert want not in (0.0, 1.0)


def test_sign_flip_p_value_of_an_all_positive_sample_by_hand():
    """d = (1, 1, 1, 1): of the 2^4 sign patterns only the all-plus one reaches the mean 1
    (one more, all-minus, reaches |mean| = 1). With every pattern drawn many times the p-value
    is about 1/16 (2/16 two-sided, 1 for "less"); the exact count on the seeded draws is
    ``(1 + #{all plus}) / (1 + n_perm)``: fails if ``+1`` is dropped or ties are not counted
    (p would be #{all plus} / n or 1 / (1 + n))."""
    d = np.ones(4)
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(4000, 4))
    all_plus, all_minus = (signs == 1).all(1).sum(), (signs == -1).all(1).sum()
    assert sign_flip_test(d, n_perm=4000) == (1 + all_plus) / 4001
    assert sign_flip_test(d, n_perm=4000, alternative="two-sided") == (
        (1 + all_plus + all_minus) / 4001)
    assert sign_flip_test(d, n_perm=4000, alternative="less") == 1.0
    assert sign_flip_test(d, n_perm=4000) == pytest.approx(1 / 16, abs=0.01)


def test_sign_flip_p_value_converges_to_the_exact_enumeration():
    """Enumerate all 2^6 sign patterns by hand: the exact p-value is the share of patterns whose
    mean is at least the observed one; 20000 random patterns land within 0.01 of it."""
    d = np.array([0.3, -0.1, 0.7, 0.2, 0.5, -0.4])
    patterns = np.array([[1.0 if (i >> b) & 1 else -1.0 for b in range(6)] for i in range(64)])
    means = (patterns * d).mean(1)
    exact = (means >= d.mean() - 1e-12).mean()
    exact_two = (np.abs(means) >= abs(d.mean()) - 1e-12).mean()
    assert exact == pytest.approx(10 / 64)  # 10 of the 64 patterns reach the mean 0.2
    assert sign_flip_test(d, n_perm=20000) == pytest.approx(exact, abs=0.01)
    assert sign_flip_test(d, n_perm=20000, alternative="two-sided") == pytest.approx(
        exact_two, abs=0.01)
    assert sign_flip_test([np.nan, *d], n_perm=200, seed=1) == sign_flip_test(d, n_perm=200,
                                                                               seed=1)


def test_permutation_p_value_on_the_seeded_relabellings():
    """Two-sample test: the same ``rng.permutation`` calls in order, the first ``len(a)`` are
    relabelled ``a``. a = (10, 11) beats every relabelling but the 1 of C(5, 2) = 10 that keeps
    them together: p = (1 + #{that one}) / (1 + n) ~ 1/10. Fails without the ``+1``, with the
    split at ``len(b)`` or with ``mean(b) - mean(a)``."""
    a, b = np.array([10.0, 11.0]), np.array([0.0, 1.0, 2.0])
    rng, pooled = np.random.default_rng(4), np.concatenate([a, b])
    perm = np.array([(lambda x: x[:2].mean() - x[2:].mean())(rng.permutation(pooled))
                     for _ in range(300)])
    together = (perm >= 9.5 - 1e-9).sum()
    assert permutation_test(a, b, n_perm=300, seed=4) == (1 + together) / 301
    assert (1 + together) / 301 == pytest.approx(1 / 10, abs=0.04)
    assert permutation_test(a, b, n_perm=300, seed=4, alternative="less") == 1.0
    two = (np.abs(perm) >= 9.5 - 1e-9).sum()
    assert permutation_test(a, b, n_perm=300, seed=4, alternative="two-sided") == (
        (1 + two) / 301)
    with pytest.raises(ValueError, match="alternative must be"):
        permutation_test(a, b, alternative="bigger")


def test_sign_test_by_enumerating_every_outcome():
    """Two-sided exact sign test = share of the 2^n equally likely win/loss sequences whose
    win count is at least as far from n/2 as the observed one (fails with one tail only, or
    without the cap at 1 when wins = losses)."""
    for wins, losses in [(5, 0), (4, 1), (7, 2), (3, 3), (2, 6), (6, 5)]:
        n = wins + losses
        counts = np.array([bin(i).count("1") for i in range(2**n)])
        exact = (np.abs(counts - n / 2) >= abs(wins - n / 2) - 1e-12).mean()
        assert sign_test(wins, losses) == pytest.approx(exact), (wins, losses)
    assert sign_test(5, 0) == 2 / 32 and sign_test(0, 0) == 1.0


def test_pearson_spearman_by_hand():
    """pearson((1, 2, 3), (1, 3, 2)) = 1/2; spearman with a tie = pearson of average ranks."""
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))
    # ranks (0, 1, 2, 3) and (0.5, 0.5, 3, 2): centred (-1.5, -.5, .5, 1.5), (-1, -1, 1.5, .5)
    assert spearman([1, 2, 3, 4], [7, 7, 9, 8]) == pytest.approx(3.5 / np.sqrt(5 * 4.5))
    with pytest.raises(ValueError, match="equal sizes"):
        spearman([1, 2], [1, 2, 3])


def test_ci_table_averages_per_example_then_bootstraps_the_examples():
    """Group a: examples 0, 1, 2 with rows (1, 3), (4), (6, 6, 9) -> per-example means 2, 4, 7,
    mean 13/3 (the row mean would be 29/6); its CI is the bootstrap CI of (2, 4, 7)."""
    import pandas as pd

    frame = pd.DataFrame({"g": ["a"] * 6 + ["b"] * 2, "example": [0, 0, 1, 2, 2, 2, 0, 1],
                          "v": [1.0, 3.0, 4.0, 6.0, 6.0, 9.0, -1.0, 1.0]})
    t = ci_table(frame, ["g"], "v", n_boot=200, seed=3).set_index("g")
    assert t.loc["a", "mean"] == pytest.approx(13 / 3) and t.loc["a", "n"] == 3
    boots = np.array([2.0, 4.0, 7.0])[_draws(3, 200, 3)].mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    assert (t.loc["a", "low"], t.loc["a", "high"]) == pytest.approx((lo, hi))
    assert (t.loc["b", "mean"], t.loc["b", "n"]) == (0.0, 2)


def test_estimate_format_and_dict():
    est = Estimate(0.5, 0.25, 0.75, n=4, p_value=0.012)
    assert est.format(".0%") == "50% [25%, 75%], p = 0.012"
    assert str(Estimate(1.0, 0.5, 2.0)) == "1 [0.5, 2]"
    assert est.as_dict("x_") == {"x_value": 0.5, "x_low": 0.25, "x_high": 0.75, "x_n": 4,
                                 "x_p_value": 0.012}
