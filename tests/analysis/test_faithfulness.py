"""Pooled faithfulness / completeness with bands equal the curves of the example-averaged
metric, and run from 0 (no head) to 1 (every head)."""

from __future__ import annotations

import numpy as np
import torch

from lvlm_lens.analysis import random_rankings, ranking_curves
from lvlm_lens.attribution import evaluate_ranking
from lvlm_lens.attribution.comparison import pooled_runner
from lvlm_lens.interventions import AblationEngine, HeadAblation, compute_baseline


def test_pooled_curves_match_the_curves_of_the_mean_metric(toy, toy_inp):
    config = HeadAblation(baseline="blank")
    engines = []
    for i in range(3):
        one = toy_inp.select(i)
        engines.append(AblationEngine(toy, one, compute_baseline(toy, one, config), config))
    n = toy.cfg.n_layers * toy.cfg.n_heads
    ks = [0, 1, 4, 16, n]
    score = torch.arange(n, dtype=torch.float32).view(toy.cfg.n_layers, toy.cfg.n_heads)
    res = ranking_curves(engines, {"fixed": score, "random": random_rankings(
        toy.cfg.n_layers, toy.cfg.n_heads, 3)}, ks, n_boot=200)
    want = evaluate_ranking(pooled_runner(engines), score, ks)
    got = res.frame[res.frame.ranking == "fixed"].set_index(["curve", "k"])["mean"]
    np.testing.assert_allclose(got["faithfulness"].values, want.faithfulness.numpy(), atol=1e-6)
    np.testing.assert_allclose(got["completeness"].values, want.completeness.numpy(), atol=1e-6)
    for curve in ("faithfulness", "completeness"):
        row = res.frame[(res.frame.curve == curve) & (res.frame.ranking == "random")]
        assert abs(row[row.k == 0]["mean"].item()) < 1e-5
        assert abs(row[row.k == n]["mean"].item() - 1) < 1e-5
    band = res.frame[(res.frame.k > 0) & (res.frame.k < n)]
    assert ((band.low <= band["mean"] + 1e-12) & (band["mean"] <= band.high + 1e-12)).all()
    assert res.plot().__class__.__name__ == "Figure"
