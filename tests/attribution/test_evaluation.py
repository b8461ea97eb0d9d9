"""Per-example ranking comparison: paired statistics, heads needed, layer distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.comparison import HEAD_ATTRIBUTION
from lvlm_lens.attribution.curves import Curves
from lvlm_lens.attribution.evaluation import (
    PerExampleEvaluation,
    bootstrap_mean_ci,
    evaluate_per_example,
    layer_distribution,
    sign_test,
)
from lvlm_lens.attribution.head_attribution import AttributionConfig, head_attribution
from lvlm_lens.data import synthetic_records
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.toy import toy_checkpoint_path


def test_sign_test_is_the_exact_two_sided_binomial():
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(0, 10) == pytest.approx(2 / 1024)
    assert sign_test(3, 1) == pytest.approx(2 * 5 / 16)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(0).normal(1.0, 1.0, 40)
    a, b = bootstrap_mean_ci(x, seed=3), bootstrap_mean_ci(x, seed=3)
    assert a == b and a[0] < x.mean() < a[1]
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))


def _curves(faith: float, comp: float, n: int = 10) -> Curves:
    ks = torch.arange(n + 1)
    f = torch.full((n + 1,), faith, dtype=torch.float64)
    c = torch.full((n + 1,), comp, dtype=torch.float64)
    f[0] = c[0] = 0.0
    f[-1] = c[-1] = 1.0
    return Curves(ks, f, c, f, c, 1.0, 0.0)


def test_paired_statistics_count_wins_losses_ties():
    ours = [0.5, 0.5, 0.5, 0.5, 0.5]
    theirs = [0.3, 0.3, 0.3, 0.7, 0.5]
    ev = PerExampleEvaluation(
        {HEAD_ATTRIBUTION: [_curves(v, v) for v in ours],
         "other": [_curves(v, 1 - v) for v in theirs]},
        n_heads=10,
    )  # fmt: skip
    table = ev.paired(seed=0)
    row = table[(table.curve == "faithfulness") & (table.fraction == 0.1)].iloc[0]
    # k <= 1 head: the curves at k = 1 are the constant values above
    assert (row.wins, row.losses, row.ties, row.n) == (3, 1, 1, 5)
    assert row.mean_diff == pytest.approx(0.08)
    assert row.sign_p == pytest.approx(sign_test(3, 1))
    assert row.ci_low <= row.mean_diff <= row.ci_high
    comp = table[(table.curve == "completeness") & (table.fraction == 0.25)].iloc[0]
    assert (comp.wins, comp.losses, comp.ties) == (1, 3, 1)  # other: 1 - v
    assert len(table) == 2 * 2 and set(table.other) == {"other"}
    needed = ev.heads_needed(0.8).set_index(["method", "curve"])
    # never reaches 0.8 before k = n -> n (the last k), per example
    assert needed.loc[(HEAD_ATTRIBUTION, "faithfulness"), "median_heads"] == 10
    fig = ev.plot()
    assert len(fig.axes) == 2


def test_layer_distribution_of_a_planted_ranking():
    ranking = torch.zeros(3, 4, 5)
    ranking[:, 3, :2] = 1.0  # two top heads in layer 3 in every example
    ranking[0, 0, 0] = 2.0  # ...and one in layer 0 in example 0
    dist = layer_distribution(ranking, fraction=0.1)  # k = 2 of 20 heads
    assert dist.k == 2
    assert dist.counts.tolist() == [1, 0, 0, 5]
    assert dist.per_example_later_half == [0.5, 1.0, 1.0]
    assert dist.later_half == pytest.approx(2.5 / 3)
    assert dist.to_frame().top_heads.sum() == 6
    assert layer_distribution(ranking[1]).ci[0] != layer_distribution(ranking[1]).ci[0]  # nan
    assert dist.plot().axes


@pytest.fixture(scope="module")
def toy_run():
    model = HookedLVLM.from_pretrained(toy_checkpoint_path())
    records = synthetic_records(3, seed=777)
    refs = [r.image for r in synthetic_records(8, seed=778)]
    cfg = AttributionConfig(n_masks=300, ablation=HeadAblation(baseline="mean"))
    engines, importance = [], []
    for r in records:
        inp = model.prepare(r.image, r.prompt, answers=r.answer)
        base = compute_baseline(model, inp, cfg.ablation, reference_images=refs)
        importance.append(
            head_attribution(model, inp, cfg, baseline=base, progress=False).importance
        )
        engines.append(AblationEngine(model, inp, base, cfg.ablation))
    return model, engines, torch.cat(importance).float()


def test_attribution_beats_its_own_reverse_on_every_example(toy_run):
    """A known effect: ranking the heads worst-first needs more heads than best-first."""
    model, engines, importance = toy_run
    n = model.cfg.n_layers * model.cfg.n_heads
    ks = list(range(0, n + 1, 2))
    ev = evaluate_per_example(
        engines, {HEAD_ATTRIBUTION: importance, "reversed": -importance}, ks,
        example_ids=["a", "b", "c"],
    )  # fmt: skip
    assert list(ev.scores().index) == ["a", "b", "c"]
    for curves in ev.curves.values():
        for c in curves:  # both curves run from 0 to 1
            assert c.faithfulness[[0, -1]].tolist() == pytest.approx([0.0, 1.0], abs=1e-5)
            assert c.completeness[[0, -1]].tolist() == pytest.approx([0.0, 1.0], abs=1e-5)
    table = ev.paired()
    for curve in ("faithfulness", "completeness"):
        row = table[(table.curve == curve) & (table.fraction == 0.25)].iloc[0]
        assert (row.wins, row.losses) == (3, 0), table
        assert row.ci_low > 0
    needed = ev.heads_needed(0.8).set_index(["method", "curve"]).median_heads
    assert needed[(HEAD_ATTRIBUTION, "completeness")] < needed[("reversed", "completeness")]


def test_per_example_evaluation_checks_its_input(toy_run):
    _, engines, importance = toy_run
    with pytest.raises(ValueError, match="must include 'head attribution'"):
        evaluate_per_example(engines, {"x": importance})
    with pytest.raises(ValueError, match="n_examples=3"):
        evaluate_per_example(engines, {HEAD_ATTRIBUTION: importance[:2]})
