"""Bootstrap CIs, permutation tests and rank correlation against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from lvlm_lens.analysis.stats import (
    bootstrap_ci,
    bootstrap_ratio,
    ci_table,
    permutation_test,
    rankdata,
    sign_flip_test,
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
