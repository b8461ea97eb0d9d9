"""Faithfulness / completeness curves on a synthetic additive metric."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens.attribution.curves import (
    Curves,
    curves_from_metrics,
    default_ks,
    evaluate_ranking,
    random_band,
    ranking_to_masks,
)
from lvlm_lens.attribution.regression import fit_linear, sample_masks

L, H = 4, 8
KS = [0, 1, 2, 4, 8, 16, 24, 32]


def additive():
    """Metric = 2 + sum of the planted weights of the heads that are *not* ablated."""
    weights = torch.distributions.Exponential(1.0).sample((L, H)) ** 3
    calls = []

    def run_masks(masks):
        calls.append(len(masks))
        return 2.0 + (weights * ~masks).sum((1, 2))

    return weights, run_masks, calls


@pytest.fixture
def setup():
    torch.manual_seed(0)
    return additive()


def test_true_ranking_endpoints_and_monotone(setup):
    weights, run_masks, calls = setup
    curves = evaluate_ranking(run_masks, weights, KS)
    assert isinstance(curves, Curves) and curves.ks.tolist() == KS
    assert calls == [2, 2 * len(KS)]
    for c in (curves.faithfulness, curves.completeness):
        assert c[0] == 0 and c[-1] == 1
        assert (c.diff() >= -1e-12).all()
    assert curves.clean == pytest.approx(2 + weights.sum().item(), rel=1e-6)
    assert curves.ablated == pytest.approx(2.0)
    top4 = weights.flatten().sort(descending=True).values[:4].sum() / weights.sum()
    assert curves.faithfulness[KS.index(4)].item() == pytest.approx(top4.item(), rel=1e-5)
    torch.testing.assert_close(curves.faithfulness, curves.completeness)  # additive metric


def test_true_ranking_beats_random(setup):
    weights, run_masks, _ = setup
    true = evaluate_ranking(run_masks, weights, KS)
    worst = evaluate_ranking(run_masks, -weights, KS)
    band = random_band(run_masks, L, H, KS, n_random=30, seed=1)
    assert band.faithfulness.shape == (3, len(KS)) and band.all_faithfulness.shape == (30, len(KS))
    middle = slice(1, -1)
    for name in ("faithfulness", "completeness"):
        t, q = getattr(true, name), getattr(band, name)
        assert (t >= q[2] - 1e-9).all() and (t[middle] > q[1][middle]).all()
        assert (getattr(worst, name)[middle] < q[1][middle]).all()
    random_median = Curves(band.ks, band.faithfulness[1], band.completeness[1], *[None] * 4)
    assert true.heads_needed(0.9) < random_median.heads_needed(0.9)
    assert true.heads_needed(0.9, "completeness") <= worst.heads_needed(0.9, "completeness")
    assert true.heads_needed(1.1) is None


def test_random_band_reproducible(setup):
    _, run_masks, _ = setup
    a = random_band(run_masks, L, H, KS, n_random=4, seed=3)
    b = random_band(run_masks, L, H, KS, n_random=4, seed=3)
    c = random_band(run_masks, L, H, KS, n_random=4, seed=4)
    assert torch.equal(a.all_faithfulness, b.all_faithfulness)
    assert not torch.equal(a.all_faithfulness, c.all_faithfulness)
    assert a.quantiles == (0.05, 0.5, 0.95)
    with pytest.raises(ValueError, match="n_random"):
        random_band(run_masks, L, H, KS, n_random=0)


def test_regression_ranking_matches_truth(setup):
    weights, run_masks, _ = setup
    masks = sample_masks(600, L, H, rate=0.1)
    fit = fit_linear(masks, run_masks(masks))  # noise-free: ridge's tiny shrinkage only
    torch.testing.assert_close(fit.importance.float(), weights, atol=0.05, rtol=1e-2)
    learned = evaluate_ranking(run_masks, fit.importance, KS)
    true = evaluate_ranking(run_masks, weights, KS)
    torch.testing.assert_close(learned.faithfulness, true.faithfulness, atol=1e-3, rtol=0)


def test_ranking_to_masks():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.9, -1.0, 0.3]])
    keep, ablate = ranking_to_masks(scores, [0, 1, 2, 3, 6])
    assert keep.shape == ablate.shape == (5, 2, 3) and keep.dtype == torch.bool
    assert torch.equal(keep, ~ablate)
    assert ablate.sum((1, 2)).tolist() == [0, 1, 2, 3, 6]
    assert ablate[1].nonzero().tolist() == [[0, 1]]  # tie (0.9, 0.9): layer-major order
    assert ablate[2].nonzero().tolist() == [[0, 1], [1, 0]]
    assert ablate[3, 0, 2] and not ablate[3, 1, 2]
    with pytest.raises(ValueError, match="ks"):
        ranking_to_masks(scores, [7])
    with pytest.raises(ValueError, match="ks"):
        ranking_to_masks(scores, [-1])
    with pytest.raises(ValueError, match="ranking"):
        ranking_to_masks(scores.flatten(), [1])


def test_curves_from_metrics():
    f = torch.tensor([1.0, 2.0, 5.0])
    g = torch.tensor([5.0, 3.0, 1.0])
    faith, comp = curves_from_metrics(f, g, f_empty=1.0, f_all=5.0, g_empty=5.0, g_all=1.0)
    torch.testing.assert_close(faith, torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64))
    torch.testing.assert_close(comp, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    with pytest.warns(UserWarning, match="unchanged"):
        faith, comp = curves_from_metrics(f, g, 1.0, 1.0, 5.0, 1.0)
    assert faith.isnan().all() and not comp.isnan().any()


def test_batching_and_defaults(setup):
    weights, run_masks, calls = setup
    curves = evaluate_ranking(run_masks, weights, KS, batch_size=5)
    assert calls == [2, 5, 5, 5, 1]
    ks = default_ks(L * H)
    assert ks[0] == 0 and ks[-1] == L * H and ks == sorted(set(ks))
    assert evaluate_ranking(run_masks, weights).ks.tolist() == ks
    calls.clear()
    evaluate_ranking(run_masks, weights, [0, 32], batch_size=1)
    assert calls == [1] * 6  # the endpoints too run one mask per call
    assert curves.faithfulness[-1] == 1

    def bad(masks):
        return torch.zeros(len(masks) + 1)

    with pytest.raises(ValueError, match="returned"):
        evaluate_ranking(bad, weights, KS)


def test_heads_needed_by_hand():
    """The first k whose curve reaches the threshold (inclusive), 0.8 by default."""
    ks = torch.tensor([0, 1, 2, 4])
    curve = torch.tensor([0.0, 0.5, 0.8, 1.0], dtype=torch.float64)
    low = torch.tensor([0.0, 0.1, 0.2, 0.85], dtype=torch.float64)
    c = Curves(ks, curve, low, curve, low, 1.0, 0.0)
    assert c.heads_needed() == 2  # 0.8 reached exactly at k = 2
    assert c.heads_needed(0.81) == 4 and c.heads_needed(0.5) == 1 and c.heads_needed(1.01) is None
    assert c.heads_needed(curve="completeness") == 4


def test_default_ks_by_hand():
    """0, the rounded values of 24 log-spaced points from 1 to n_total, and n_total."""
    for n in (1000, 1656):  # 1656: float32 steps would round one point differently
        want = sorted({0, n} | {round(n ** (i / 23)) for i in range(24)})
        assert default_ks(n) == want and 1 in want and 2 in want
    assert default_ks(12) == list(range(13))  # every k when the grid is denser than the heads


def test_single_k_and_the_raw_values(setup):
    weights, run_masks, _ = setup
    one = evaluate_ranking(run_masks, weights, [3])
    top3 = weights.flatten().sort(descending=True).values[:3].sum()
    assert one.ks.tolist() == [3]
    assert one.f_values.item() == pytest.approx(2 + top3.item(), rel=1e-6)
    assert one.g_values.item() == pytest.approx(2 + weights.sum().item() - top3.item(), rel=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        evaluate_ranking(run_masks, weights, [])


def test_random_band_defaults_and_members(setup):
    """20 rankings drawn with seed 0 by default; each member is the curve of its ranking, the
    band their quantiles."""
    from lvlm_lens.attribution.curves import random_rankings

    _, run_masks, _ = setup
    band = random_band(run_masks, L, H, KS)
    rankings = random_rankings(L, H, 20)
    assert band.all_faithfulness.shape == (20, len(KS)) and band.ks.tolist() == KS
    for i in (0, 19):
        c = evaluate_ranking(run_masks, rankings[i], KS)
        torch.testing.assert_close(band.all_faithfulness[i], c.faithfulness)
        torch.testing.assert_close(band.all_completeness[i], c.completeness)
    q = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    torch.testing.assert_close(band.completeness, band.all_completeness.quantile(q, 0))
    calls = []
    counted = lambda m: calls.append(len(m)) or run_masks(m)  # noqa: E731
    one = random_band(counted, L, H, KS, n_random=1, quantiles=(0.5,), batch_size=1)
    torch.testing.assert_close(one.faithfulness[0], one.all_faithfulness[0])  # its own median
    assert one.faithfulness.shape == (1, len(KS)) and set(calls) == {1}


def test_curves_of_an_interacting_metric_at_every_k_by_hand():
    """Three heads a, b, c scored 1, 3, 2 (ranked b > c > a, a 3-cycle of positions);
    metric = 4·[b kept] + 2·[c kept] + 1·[a kept] + 3·[b and c kept] (clean 10, all ablated
    0). Keeping the top k gives f = 0, 4, 9, 10; ablating them leaves g = 10, 3, 1, 0. So
    faithfulness = 0, .4, .9, 1 and completeness = 0, .7, .9, 1 (unequal: not an additive
    metric). Fails with f and g swapped, endpoints swapped, ``<=`` at the k boundary (one head
    too many), the ranking ascending or the sort order used as ranks (no inverse)."""
    def run_masks(masks):
        a, b, c = (~masks.reshape(len(masks), 3)).double().unbind(1)
        return 4 * b + 2 * c + a + 3 * b * c

    scores = torch.tensor([[1.0, 3.0, 2.0]])
    curves = evaluate_ranking(run_masks, scores, [0, 1, 2, 3])
    assert (curves.clean, curves.ablated) == (10.0, 0.0)
    assert curves.f_values.tolist() == [0.0, 4.0, 9.0, 10.0]
    assert curves.g_values.tolist() == [10.0, 3.0, 1.0, 0.0]
    want = torch.tensor([[0, 0.4, 0.9, 1], [0, 0.7, 0.9, 1]], dtype=torch.float64)
    torch.testing.assert_close(curves.faithfulness, want[0])
    torch.testing.assert_close(curves.completeness, want[1])
    assert curves.heads_needed(0.7, "completeness") == 1 and curves.heads_needed(0.7) == 2
    _, ablate = ranking_to_masks(scores, [1, 2])
    assert ablate.reshape(2, 3).tolist() == [[False, True, False], [False, True, True]]
