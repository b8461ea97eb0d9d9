"""Token-level flow: knockout windows with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lvlm_lens import HookedLVLM, synthetic_records
from lvlm_lens.analysis import FlowConfig, default_window, image_regions, token_flow
from lvlm_lens.analysis.flow import FlowResult
from tests.helpers import PROMPTS, noise_image


def test_default_window_scales_with_depth():
    assert default_window(32) == 9
    assert [default_window(n) for n in (1, 4, 8, 40)] == [1, 1, 2, 11]


def all_layers(n_layers):
    return FlowConfig(edges=[("image", "text")], window=2 * n_layers + 1, progress=False)


def test_cutting_every_image_to_text_edge_makes_the_answer_independent_of_the_image(toy):
    recs = synthetic_records(4, seed=5)
    prompts = [recs[0].prompt] * 2
    a = toy.prepare([recs[0].image, recs[1].image], prompts, [recs[0].answer] * 2)
    b = toy.prepare([recs[2].image, recs[3].image], prompts, [recs[0].answer] * 2)
    fa, fb = (token_flow(toy, x, all_layers(toy.cfg.n_layers)).frame for x in (a, b))
    assert (fa["first"] == 0).all() and (fa["last"] == toy.cfg.n_layers - 1).all()
    # the clean answer depends on the image ...
    assert abs(fa.p_clean[0] - fb.p_clean[0]) > 1e-3
    # ... the knocked-out one does not (same prompt, four different images)
    p = torch.tensor([*fa.p_new, *fb.p_new])
    torch.testing.assert_close(p, p[:1].expand_as(p), atol=1e-6, rtol=1e-5)


def test_model_agnostic_on_any_resolution_tiles(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-next-mistral"))
    prompts = [PROMPTS[0]] * 2
    a = model.prepare([noise_image(20, 28, 1), noise_image(20, 28, 2)], prompts, ["star"] * 2)
    b = model.prepare([noise_image(20, 28, 3), noise_image(20, 28, 4)], prompts, ["star"] * 2)
    fa, fb = (token_flow(model, x, all_layers(model.cfg.n_layers)).frame for x in (a, b))
    p = torch.tensor([*fa.p_new, *fb.p_new])
    torch.testing.assert_close(p, p[:1].expand_as(p), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(torch.tensor([*fa.p_clean, *fb.p_clean]), p)


def test_table_shape_heads_restriction_and_groups(toy, toy_inp, toy_records):
    n = toy.cfg.n_layers
    edges = [("image", "final"), ("object", "final")]
    groups = image_regions(toy_inp, [r.mask for r in toy_records])
    full = token_flow(toy, toy_inp, FlowConfig(edges=edges, progress=False), groups=groups)
    assert len(full.frame) == len(edges) * n * len(toy_inp)
    assert set(full.summary().columns) >= {"edge", "layer", "mean", "low", "high"}
    every = [(layer, h) for layer in range(n) for h in range(toy.cfg.n_heads)]
    same = token_flow(toy, toy_inp, FlowConfig(edges=edges, heads=every, progress=False),
                      groups=groups)
    torch.testing.assert_close(torch.tensor(same.frame.p_new.values),
                               torch.tensor(full.frame.p_new.values))
    none = token_flow(toy, toy_inp, FlowConfig(edges=edges, heads=[], progress=False),
                      groups=groups)
    assert (none.frame.change == 0).all() and (none.frame.heads == 0).all()
    # image -> final matters somewhere on the toy (it reads the image at the final token)
    assert full.strongest().set_index("edge").loc["image\u2192final", "mean"] < -0.1
    fig = full.plot()
    assert fig.__class__.__name__ == "Figure"


def test_unknown_group_is_named(toy, toy_inp):
    with pytest.raises(KeyError, match="objekt"):
        token_flow(toy, toy_inp, FlowConfig(edges=[("objekt", "final")], progress=False))


OFFSETS = np.array([-2.0, -0.5, 0.0, 1.0, 1.5])  # sum 0: the mean is the given one


def _hand_result(seed: int = 0) -> FlowResult:
    """Two edges x 4 window centres x 5 examples with round changes: per (edge, layer) the
    examples' changes are ``mean + d * OFFSETS``; image->final drops most at layer 2, text->final
    has only positive changes (smallest at layer 3) and its largest |change| at layer 0."""
    means = {"image\u2192final": [-0.1, -0.3, -0.6, -0.2], "text\u2192final": [0.9, 0.4, 0.2, 0.1]}
    rows = []
    for edge, ms in means.items():
        for layer, m in enumerate(ms):
            for ex, off in enumerate(OFFSETS):
                rows.append({"edge": edge, "layer": layer, "example": ex,
                             "change": m + 0.05 * (layer + 1) * off})
    return FlowResult(pd.DataFrame(rows), window=3, summary_seed=seed)


def test_summary_is_the_per_window_mean_with_the_bootstrap_ci_over_examples():
    """``mean`` is the average over examples; ``low`` / ``high`` the 2.5 / 97.5 % quantiles of
    the means of ``default_rng(summary_seed)`` resamples (fails if the seed, the level or the
    grouping is wrong)."""
    res = _hand_result(seed=4)
    s = res.summary()
    assert list(s.edge.unique()) == ["image\u2192final", "text\u2192final"]
    assert s.layer.tolist() == [0, 1, 2, 3] * 2 and (s.n == 5).all()
    np.testing.assert_allclose(s["mean"], [-0.1, -0.3, -0.6, -0.2, 0.9, 0.4, 0.2, 0.1])
    idx, idx0 = (np.random.default_rng(k).integers(0, 5, size=(1000, 5)) for k in (4, 0))
    for row in s.itertuples():
        values = row.mean + 0.05 * (row.layer + 1) * OFFSETS
        want = np.quantile(values[idx].mean(1), [0.025, 0.975])
        assert (row.low, row.high) == pytest.approx(tuple(want), abs=1e-12)
        seed0 = np.quantile(values[idx0].mean(1), [0.025, 0.975])
        assert np.abs(seed0 - want).max() > 1e-6  # seed 0 gives another interval


def test_strongest_is_the_most_negative_window_of_each_edge():
    """Per edge, the summary row of the smallest mean: image->final at layer 2 (mean -0.6),
    text->final at layer 3 (0.1). Fails with ``idxmax`` (layers 0 and 0), with ``abs`` (text:
    layer 0) or with one minimum over all edges (a single row)."""
    res = _hand_result()
    best = res.strongest()
    assert best.edge.tolist() == ["image\u2192final", "text\u2192final"]
    assert best.layer.tolist() == [2, 3]
    np.testing.assert_allclose(best["mean"], [-0.6, 0.1])
    s = res.summary().set_index(["edge", "layer"])
    for row in best.itertuples():  # the same row as the summary's, CI included
        want = s.loc[(row.edge, row.layer)]
        assert (row.mean, row.low, row.high, row.n) == (want["mean"], want.low, want.high,
                                                         want.n)


def test_frame_windows_changes_and_clean_probability_by_hand(toy, toy_inp):
    """Windows of 3 on 4 layers are clipped (centre 0: layers 0-1; centre 3: 2-3); ``heads`` is
    layers x heads; ``change`` is (p_new - p_clean) / p_clean; p_clean is softmax of the clean
    final logits at the answer id."""
    inp = toy_inp.select([0, 1])
    res = token_flow(toy, inp, FlowConfig(edges=[("image", "final")], window=3, progress=False))
    f = res.frame
    assert f.layer.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and f.example.tolist() == [0, 1] * 4
    assert f["first"].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert f["last"].tolist() == [1, 1, 2, 2, 3, 3, 3, 3]
    assert f.heads.tolist() == [2 * 8, 2 * 8, 3 * 8, 3 * 8, 3 * 8, 3 * 8, 2 * 8, 2 * 8]
    with torch.no_grad():
        logits = toy(inp)[:, -1].double()
    p = logits.softmax(-1)[torch.arange(2), inp.answer_ids].numpy()
    np.testing.assert_allclose(f.p_clean, np.tile(p, 4), rtol=1e-5)
    np.testing.assert_allclose(f.change, (f.p_new - f.p_clean) / f.p_clean, rtol=1e-5)
    assert (f.change.abs() > 1e-4).any()
