"""The claim measurements: planted answers for the statistics, real effects on the toy."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.analysis.claims import (
    first_window,
    flow_sweep,
    object_vs_background,
    rank_agreement,
    semantic_vs_appearance,
    single_head_spread,
)
from lvlm_lens.data import patch_grid_mask, synthetic_records
from lvlm_lens.interventions.token_ablation import mean_image_token
from lvlm_lens.toy import TOY_GRID, toy_checkpoint_path


def _planted(by: str, seed: int = 0):
    """8 classes x 3 looks; vectors = a pattern of the class or of the look, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    classes = [c for _ in range(3) for c in range(8)]
    looks = [k for k in range(3) for _ in range(8)]
    cls_pattern, look_pattern = (
        torch.randn(8, 4, 6, generator=gen),
        torch.randn(3, 4, 6, generator=gen),
    )
    keys = classes if by == "class" else looks
    pattern = cls_pattern if by == "class" else look_pattern
    x = torch.stack([pattern[k] for k in keys]) + 0.3 * torch.randn(24, 4, 6, generator=gen)
    return x, [str(c) for c in classes], [str(k) for k in looks]


def test_semantic_vs_appearance_recovers_a_planted_class_dependence():
    x, classes, looks = _planted("class")
    res = semantic_vs_appearance(x, classes, looks, n_perm=500)
    assert res.difference > 0.5 and res.p_value < 0.01
    assert res.summary()["n_pairs"] == [24, 84, 168]  # 8x3 pairs, 3x28, the rest
    x, classes, looks = _planted("look")
    res = semantic_vs_appearance(x, classes, looks, n_perm=500)
    assert res.difference < 0 and res.p_value > 0.1  # no class effect: not significant


def test_single_head_spread_and_rank_agreement():
    single = torch.zeros(2, 2, 2)
    single[0, 0, 0], single[0, 1, 1] = 1.0, 1.0  # sums to 2 of an all-heads effect of 4
    single[1, 0, 1] = 3.0
    spread = single_head_spread(single, torch.tensor([4.0, 3.0]))
    assert spread["sum_ratio"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert spread["max_ratio"]["mean"] == pytest.approx((0.25 + 1.0) / 2)
    a = torch.randn(3, 4, 5)
    assert rank_agreement(a, a)["mean"] == pytest.approx(1.0)
    assert rank_agreement(a, -a)["mean"] == pytest.approx(-1.0)
    assert rank_agreement(a, a**3)["per_example"] == pytest.approx([1.0] * 3)  # monotone


@pytest.fixture(scope="module")
def toy():
    return HookedLVLM.from_pretrained(toy_checkpoint_path())


def test_flow_sweep_finds_the_image_to_final_route(toy):
    """Knocking out every image -> text edge in most layers leaves the image unread: the
    answer probability falls and most answers change."""
    recs = synthetic_records(8, seed=55)
    inp = toy.prepare([r.image for r in recs], [r.prompt for r in recs], [r.answer for r in recs])
    frame = flow_sweep(toy, [inp], window=toy.cfg.n_layers, edges=[("image", "final"),
                       ("image", "text")], labels=["shape"])  # fmt: skip
    assert set(frame.columns) >= {"edge", "centre", "input", "label", "effect", "flipped"}
    assert len(frame) == 2 * toy.cfg.n_layers
    whole = frame[frame.edge == "image->text"]
    # windows are clipped at the ends, so even the widest leaves a layer or two open
    assert (whole.effect < -0.5).all() and (whole.flipped >= 0.5).all()
    assert first_window(frame, "image->text") == 0


def test_object_tokens_matter_more_than_as_many_background_tokens(toy):
    recs = synthetic_records(8, seed=56)
    inputs = [toy.prepare(r.image, r.prompt, answers=r.answer) for r in recs]
    refs = [toy.prepare(r.image, r.prompt) for r in synthetic_records(8, seed=57)]
    masks = [patch_grid_mask(r.mask, TOY_GRID).flatten() for r in recs]
    frame = object_vs_background(toy, inputs, masks, mean_image_token(toy, refs))
    assert (frame.n_object == frame.n_background).all()
    drop_obj = (frame.clean_prob - frame.object_prob).mean()
    drop_bg = (frame.clean_prob - frame.background_prob).mean()
    assert drop_obj > drop_bg
