"""Token-level flow: knockout windows with known answers."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM, synthetic_records
from lvlm_lens.analysis import FlowConfig, default_window, image_regions, token_flow
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
