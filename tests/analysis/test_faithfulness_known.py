"""Pooled ranking curves by hand: a stand-in engine whose metric is a known function of which
heads are kept, so every f, g, pooled curve and band is a small sum computed on paper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvlm_lens.analysis import random_rankings, ranking_curves

# 3 layers x 1 head (a head count per layer, 1, differs from the total, 3). A mask entry True
# = ablated. Example 0: metric 1 + 3·[h0 kept] + 1·[h1 kept]; example 1: [h0] + [h1] + 2·[h2]
# + 2·[h0 and h1 kept] (an interaction, so that faithfulness and completeness differ).


def metric(example: int, masks: torch.Tensor) -> torch.Tensor:
    kept = (~masks.reshape(len(masks), 3)).double()  # h0, h1, h2 = layers 0, 1, 2
    if example == 0:
        return 1 + 3 * kept[:, 0] + kept[:, 1]
    return kept[:, 0] + kept[:, 1] + 2 * kept[:, 2] + 2 * kept[:, 0] * kept[:, 1]


class StandIn:
    """The part of an AblationEngine that ranking_curves uses: ``inp`` and ``run``."""

    def __init__(self, examples: list[int]):
        self.examples, self.inp = examples, [None] * len(examples)

    def run(self, masks, examples=None, progress=True):
        assert masks.shape[1:] == (3, 1)
        return torch.stack([metric(self.examples[i], masks) for i in examples])


FIXED = torch.tensor([[0.9], [0.5], [0.1]])  # order h0, h1, h2
KS = [0, 1, 2, 3]


def test_pooled_curves_are_ratios_of_sums_over_examples_by_hand():
    """Example 0: clean 5, ablated 1, f(top-k) = 1, 4, 5, 5, g = 5, 2, 1, 1; example 1:
    clean 6, ablated 0, f = 0, 1, 4, 6, g = 6, 3, 2, 0. Faithfulness = (0, 3+1, 4+4, 4+6) / 10,
    completeness = (0, 3+3, 4+4, 4+6) / 10 (the mean of the two ratios would give 0.458 at
    k = 1). One batch engine of both examples gives the same as one engine per example."""
    for engines in ([StandIn([0]), StandIn([1])], [StandIn([0, 1])]):
        res = ranking_curves(engines, {"fixed": FIXED}, KS, n_boot=400)
        per = res.per_example.set_index(["example", "k"])
        np.testing.assert_array_equal(per.loc[0].f, [1, 4, 5, 5])
        np.testing.assert_array_equal(per.loc[0].g, [5, 2, 1, 1])
        np.testing.assert_array_equal(per.loc[1].f, [0, 1, 4, 6])
        np.testing.assert_array_equal(per.loc[1].g, [6, 3, 2, 0])
        assert (per.loc[0].clean == 5).all() and (per.loc[0].ablated == 1).all()
        assert (per.loc[1].clean == 6).all() and (per.loc[1].ablated == 0).all()
        f = res.frame.set_index(["curve", "k"])
        np.testing.assert_allclose(f.loc["faithfulness"]["mean"], [0, 0.4, 0.8, 1])
        np.testing.assert_allclose(f.loc["completeness"]["mean"], [0, 0.6, 0.8, 1])
        assert res.n_heads == 3 and set(res.frame.ranking) == {"fixed"}


def test_band_spans_the_two_one_example_resamples():
    """With two examples a resample is (0, 0), (1, 1) or one of each (a quarter, a quarter,
    half of the draws): the 2.5 % and 97.5 % quantiles are the one-example ratios. At k = 1:
    faithfulness 1/6 (example 1: 1/6) to 3/4 (example 0: 3/4); completeness 1/2 (3/6) to 3/4;
    at k = 2: 2/3 (4/6) to 1 (4/4) for both curves."""
    res = ranking_curves([StandIn([0]), StandIn([1])], {"fixed": FIXED}, KS, n_boot=2000, seed=3)
    f = res.frame.set_index(["curve", "k"])
    np.testing.assert_allclose(f.loc["faithfulness"].loc[[1, 2], "low"], [1 / 6, 2 / 3])
    np.testing.assert_allclose(f.loc["faithfulness"].loc[[1, 2], "high"], [3 / 4, 1])
    np.testing.assert_allclose(f.loc["completeness"].loc[[1, 2], "low"], [1 / 2, 2 / 3])
    np.testing.assert_allclose(f.loc["completeness"].loc[[1, 2], "high"], [3 / 4, 1])
    # a few resamples: the band is the quantiles of the ratios of the seeded draws (the same
    # draws for every row); seeds 3 and 4 draw different bands
    num = np.array([[3.0, 1.0], [3.0, 3.0]])  # k = 1: faithfulness, completeness numerators
    span = np.array([4.0, 6.0])
    want = {}
    for seed in (3, 4):
        idx = np.random.default_rng(seed).integers(0, 2, size=(6, 2))
        want[seed] = np.quantile(num[:, idx].sum(-1) / span[idx].sum(-1), [0.025, 0.975], 1).T
        small = ranking_curves([StandIn([0, 1])], {"fixed": FIXED}, KS, n_boot=6, seed=seed)
        got = small.frame[small.frame.k == 1].set_index("curve")
        np.testing.assert_allclose(
            got.loc[["faithfulness", "completeness"], ["low", "high"]], want[seed]
        )
    assert not np.allclose(want[3], want[4])
    # one example: no resampling, the band is the value
    one = ranking_curves([StandIn([1])], {"fixed": FIXED}, KS).frame
    np.testing.assert_allclose(one.low, one["mean"])
    np.testing.assert_allclose(one.high, one["mean"])
    np.testing.assert_allclose(one[one.curve == "faithfulness"]["mean"], [0, 1 / 6, 4 / 6, 1])


def test_per_example_rankings_rank_each_example_by_its_own_scores():
    """Example 1 ranked h2, h1, h0: f = 0, 2, 3, 6 and g = 6, 4, 1, 0; pooled with example 0
    (ranked h0, h1, h2 as before): faithfulness (0, 3+2, 4+3, 10) / 10, completeness
    (0, 3+2, 4+5, 10) / 10."""
    per_ex = torch.tensor([[[0.9], [0.5], [0.1]], [[0.1], [0.5], [0.9]]])
    res = ranking_curves([StandIn([0, 1])], {"own": per_ex, "fixed": FIXED}, KS, n_boot=100)
    f = res.frame[res.frame.ranking == "own"].set_index(["curve", "k"])
    np.testing.assert_allclose(f.loc["faithfulness"]["mean"], [0, 0.5, 0.7, 1])
    np.testing.assert_allclose(f.loc["completeness"]["mean"], [0, 0.5, 0.9, 1])
    per = res.per_example[res.per_example.ranking == "own"].set_index(["example", "k"])
    np.testing.assert_array_equal(per.loc[1].f, [0, 2, 3, 6])
    np.testing.assert_array_equal(per.loc[1].g, [6, 4, 1, 0])
    assert list(dict.fromkeys(res.frame.ranking)) == ["own", "fixed"]


def test_at_and_heads_needed_read_the_pooled_curves():
    """Faithfulness 0, .4, .8, 1 reaches 0.8 at k = 2 and 0.5 at k = 2; completeness
    0, .6, .8, 1 reaches 0.5 at k = 1; a threshold above 1 is never reached."""
    res = ranking_curves([StandIn([0, 1])], {"fixed": FIXED}, KS, n_boot=100)
    assert res.heads_needed(0.8).to_dict() == {"fixed": 2}
    assert res.heads_needed().to_dict() == {"fixed": 2}  # defaults: 0.8, faithfulness
    assert res.heads_needed(0.5).to_dict() == {"fixed": 2}
    assert res.heads_needed(0.5, "completeness").to_dict() == {"fixed": 1}
    assert res.heads_needed(0.6, "completeness").to_dict() == {"fixed": 1}
    assert res.heads_needed(1.01).to_dict() == {}
    row = res.at(1)  # default curve: completeness
    assert row.ranking.tolist() == ["fixed"] and row["mean"].item() == pytest.approx(0.6)
    assert res.at(1, "faithfulness")["mean"].item() == pytest.approx(0.4)
    assert res.at(2, "faithfulness").index.tolist() == [0]
    assert list(res.at(3).columns) == ["ranking", "curve", "k", "mean", "low", "high"]
    assert res.to_frame() is res.frame


def test_default_ks_and_plot_window():
    """Without ks, every k of default_ks(3) = 0, 1, 2, 3 is evaluated; ``plot(max_k=1)``
    draws one panel per curve with the points k = 0, 1 only: faithfulness 0, .4 and
    completeness 0, .6."""
    res = ranking_curves([StandIn([0, 1])], {"fixed": FIXED}, n_boot=50)
    assert sorted(set(res.frame.k)) == [0, 1, 2, 3]
    fig = res.plot(max_k=1)
    lines = {ax.get_title(): ax.get_lines() for ax in fig.axes if ax.get_visible()}
    assert set(lines) == {"faithfulness", "completeness"}
    for curve, want in (("faithfulness", [0, 0.4]), ("completeness", [0, 0.6])):
        (line,) = lines[curve]  # no zero line: one line per ranking
        np.testing.assert_array_equal(line.get_xdata(), [0, 1])
        np.testing.assert_allclose(line.get_ydata(), want)


def test_random_rankings_are_seeded_uniform_scores_one_per_example():
    """``[n, n_layers, n_heads]`` draws of torch.rand on a generator seeded with ``seed``."""
    r = random_rankings(2, 3, 4, seed=5)
    assert r.shape == (4, 2, 3)
    want = torch.rand((4, 2, 3), generator=torch.Generator().manual_seed(5))
    assert torch.equal(r, want)
    assert torch.equal(
        random_rankings(2, 3, 4), torch.rand((4, 2, 3), generator=torch.Generator().manual_seed(0))
    )
    assert not torch.equal(r[0], r[1]) and ((r >= 0) & (r < 1)).all()
