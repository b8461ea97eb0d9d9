"""Per-example ranking comparison: paired statistics, heads needed, layers, single-head spread."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lvlm_lens.analysis import (
    CurvesResult,
    layer_distribution,
    paired_comparison,
    per_example_curves,
    ranking_curves,
    sign_test,
    single_head_spread,
)
from lvlm_lens.attribution import AttributionConfig, head_attribution
from lvlm_lens.attribution.comparison import HEAD_ATTRIBUTION
from lvlm_lens.interventions import AblationEngine, HeadAblation, compute_baseline


def test_sign_test_is_the_exact_two_sided_binomial():
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(0, 10) == pytest.approx(2 / 1024)
    assert sign_test(3, 1) == pytest.approx(2 * 5 / 16)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0


def _curves(values: dict[str, list[float]], n: int = 10) -> CurvesResult:
    """Per-example curves that are constant (the given value) for 0 < k < n: f = g' = value
    with clean = 1, ablated = 0, so faithfulness = value and completeness = 1 - value."""
    rows, pooled = [], []
    for name, vals in values.items():
        for ex, v in enumerate(vals):
            for k in range(n + 1):
                f = 0.0 if k == 0 else 1.0 if k == n else v
                rows.append({"ranking": name, "example": ex, "k": k, "f": f, "g": f,
                             "clean": 1.0, "ablated": 0.0})  # fmt: skip
        for curve in ("faithfulness", "completeness"):
            for k in range(n + 1):
                pooled.append({"ranking": name, "curve": curve, "k": k, "mean": 0.5,
                               "low": 0.5, "high": 0.5})  # fmt: skip
    return CurvesResult(pd.DataFrame(pooled), pd.DataFrame(rows), n)


def test_paired_statistics_count_wins_losses_ties():
    res = _curves({HEAD_ATTRIBUTION: [0.5] * 5, "other": [0.3, 0.3, 0.3, 0.7, 0.5]})
    per = per_example_curves(res)
    assert (
        per[(per.k == 3) & (per.example == 3) & (per.ranking == "other")].faithfulness.item() == 0.7
    )
    comp = paired_comparison(res, n_boot=500)
    table = comp.to_frame()
    row = table[(table.curve == "faithfulness") & (table.fraction == 0.1)].iloc[0]
    assert (row.wins, row.losses, row.ties, row.n) == (3, 1, 1, 5)
    assert row.mean_diff == pytest.approx(0.08)
    assert row.sign_p == pytest.approx(sign_test(3, 1))
    assert row.low <= row.mean_diff <= row.high
    # completeness = 1 - g: the other method's completeness is 1 - v, ours 0.5
    row = table[(table.curve == "completeness") & (table.fraction == 0.25)].iloc[0]
    assert (row.wins, row.losses, row.ties) == (1, 3, 1)
    assert len(table) == 4 and set(table.other) == {"other"}
    heads = comp.heads.set_index(["ranking", "curve"])
    # 0.5 < 0.8 until k = n: every example needs all 10 heads
    assert heads.loc[(HEAD_ATTRIBUTION, "faithfulness"), "median_heads"] == 10
    assert heads.loc[("other", "faithfulness"), "n_reached"] == 5
    assert len(comp.plot().axes) == 2
    with pytest.raises(ValueError, match="no ranking 'x'"):
        paired_comparison(res, "x")


def test_layer_distribution_of_a_planted_ranking():
    ranking = torch.zeros(3, 4, 5)
    ranking[:, 3, :2] = 1.0  # two top heads in layer 3 in every example
    ranking[0, 0, 0] = 2.0  # ...and in example 0 one of them is in layer 0 instead
    dist = layer_distribution(ranking, fraction=0.1)  # k = 2 of 20 heads
    assert dist.k == 2
    assert dist.counts.tolist() == [1, 0, 0, 5]
    assert dist.per_example_later_half == [0.5, 1.0, 1.0]
    assert dist.later_half.value == pytest.approx(2.5 / 3)
    assert dist.to_frame().top_heads.sum() == 6
    one = layer_distribution(ranking[1])
    assert one.later_half.low == one.later_half.high == 1.0
    assert dist.plot().axes


def test_single_head_spread():
    single = torch.zeros(2, 2, 2)
    single[0, 0, 0], single[0, 1, 1] = 1.0, 1.0  # sums to 2 of an all-heads effect of 4
    single[1, 0, 1] = 3.0
    spread = single_head_spread(single, torch.tensor([4.0, 3.0]))
    assert spread["sum_ratio"].value == pytest.approx((0.5 + 1.0) / 2)
    assert spread["max_ratio"].value == pytest.approx((0.25 + 1.0) / 2)


def test_attribution_beats_its_own_reverse_on_every_example(toy, toy_inp):
    """A known effect: ranking each example's heads worst-first needs more heads."""
    config = AttributionConfig(n_masks=300, ablation=HeadAblation(baseline="blank"))
    engines, importance = [], []
    for i in range(3):
        one = toy_inp.select(i)
        base = compute_baseline(toy, one, config.ablation)
        importance.append(head_attribution(toy, one, config, baseline=base,
                                           progress=False).importance)  # fmt: skip
        engines.append(AblationEngine(toy, one, base, config.ablation))
    imp = torch.cat(importance).float()
    n = toy.cfg.n_layers * toy.cfg.n_heads
    res = ranking_curves(engines, {HEAD_ATTRIBUTION: imp, "reversed": -imp},
                         list(range(0, n + 1, 2)), n_boot=200)  # fmt: skip
    per = per_example_curves(res)
    ends = per[per.k.isin([0, n])].sort_values("k")
    assert ends[ends.k == 0].faithfulness.abs().max() < 1e-5
    assert (ends[ends.k == n].completeness - 1).abs().max() < 1e-5
    table = paired_comparison(res, n_boot=200).to_frame()
    for curve in ("faithfulness", "completeness"):
        row = table[(table.curve == curve) & (table.fraction == 0.25)].iloc[0]
        assert (row.wins, row.losses) == (3, 0), table
        assert row.low > 0 and row.pooled_reference > row.pooled_other


def test_paired_comparison_ci_is_the_bootstrap_of_the_per_example_differences():
    """Differences 0.2, 0.2, 0.2, -0.2, 0 (faithfulness over the first 10 % of heads): mean 0.08
    and the 2.5 / 97.5 % quantiles of the means of the same ``default_rng(seed)`` resamples.
    Fails at the wrong level (0.9) or with the seed ignored (0)."""
    import numpy as np

    res = _curves({HEAD_ATTRIBUTION: [0.5] * 5, "other": [0.3, 0.3, 0.3, 0.7, 0.5]})
    table = paired_comparison(res, n_boot=300, seed=6).to_frame()
    row = table[(table.curve == "faithfulness") & (table.fraction == 0.1)].iloc[0]
    diff = np.array([0.2, 0.2, 0.2, -0.2, 0.0])
    boots, boots0 = (diff[np.random.default_rng(s).integers(0, 5, size=(300, 5))].mean(1)
                     for s in (6, 0))
    assert (row.low, row.high) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))
    assert abs(np.quantile(boots0, 0.025) - row.low) > 1e-6  # seed 0: another interval
