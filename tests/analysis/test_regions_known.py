"""Object / background / random image tokens and matched-count ablation by hand.

The toy's 48 x 48 picture is a 6 x 6 grid of 8 x 8-pixel patches whose tokens sit, row-major,
at positions 3 ... 38 of the prompt (BOS, ``USER``, ``:``, then the image): patch ``(r, c)`` is
position ``3 + 6 r + c``. Object masks are drawn on that grid by hand; the ablated answer
probabilities are checked against the model run on image embeddings edited by hand (the
chosen tokens' rows set to the baseline vector) and a softmax.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from lvlm_lens.analysis import RegionAblationResult, image_regions, object_patches
from lvlm_lens.analysis.regions import region_ablation

FIRST = 3  # position of the image's first token


def pos(r: int, c: int) -> int:
    return FIRST + 6 * r + c


def masks_by_hand() -> list[np.ndarray]:
    """Example 0: patch (0, 1) whole, (2, 3) at exactly a quarter (16 of 64 pixels), (4, 4)
    at 15 pixels. Example 1: every patch but the last column and row 5's first patch."""
    a = np.zeros((48, 48), bool)
    a[0:8, 8:16] = True  # patch (0, 1)
    a[16:18, 24:32] = True  # patch (2, 3): 2 rows of 8 = 16 pixels
    a[32, 32:40] = True  # patch (4, 4): 8 + 7 = 15 pixels
    a[33, 32:39] = True
    b = np.ones((48, 48), bool)
    b[:, 40:] = False  # column 5
    b[40:, :8] = False  # patch (5, 0)
    return [a, b]


@pytest.fixture(scope="module")
def two(toy_inp):
    inp = toy_inp.select([0, 1])
    assert inp.groups["image"][0].nonzero().flatten().tolist() == list(range(3, 39))
    return inp


def test_object_patches_at_or_above_the_threshold_by_hand(two):
    a, b = masks_by_hand()
    obj = object_patches(two, [a, b])
    assert obj[0].nonzero().flatten().tolist() == [pos(0, 1), pos(2, 3)]  # 15/64 < 0.25
    low = object_patches(two, [a, b], threshold=0.2)  # 15/64 = 0.234 >= 0.2
    assert low[0].nonzero().flatten().tolist() == [pos(0, 1), pos(2, 3), pos(4, 4)]
    want = {pos(r, c) for r in range(6) for c in range(5)} - {pos(5, 0)}
    assert set(obj[1].nonzero().flatten().tolist()) == want and int(obj[1].sum()) == 29
    assert obj.shape == two.shape and obj.dtype == torch.bool
    swapped = object_patches(two, [b, a])  # one mask per example, in order
    assert torch.equal(swapped[0], obj[1]) and torch.equal(swapped[1], obj[0])


def test_object_patches_refuse_a_missing_mask_or_a_wrong_count(two):
    a, _ = masks_by_hand()
    with pytest.raises(ValueError, match="got 1 masks for 2 examples"):
        object_patches(two, [a])
    with pytest.raises(ValueError, match="got 3 masks for 2 examples"):
        object_patches(two, [a, a, a])
    with pytest.raises(ValueError, match="example 1 has no object mask"):
        object_patches(two, [a, None])


def test_empty_grid_cells_mark_no_token(two):
    """A layout whose grid has cells without a token (position -1): the last image token moved
    from cell (5, 5) to (6, 0) gives a 7 x 6 grid with 6 empty cells; a mask covering the whole
    picture marks exactly the 36 image tokens (not position -1, the final token)."""
    coords = [c.clone() for c in two.image_coords]
    coords[0][-1, 1:] = torch.tensor([6, 0])
    odd = dataclasses.replace(two, image_coords=coords)
    full = np.ones((48, 48), bool)
    obj = object_patches(odd, [full, full])
    assert torch.equal(obj, two.groups["image"].bool())


def test_image_regions_background_is_the_rest_and_random_the_seeded_draw(two):
    """Background = every other image token (36 - 2 and 36 - 29); random = ``n_object``
    image tokens drawn with ``default_rng(seed).choice`` per example, in example order."""
    masks = masks_by_hand()
    for seed in (0, 7):
        reg = image_regions(two, masks, seed=seed)
        obj = object_patches(two, masks)
        assert torch.equal(reg["object"], obj)
        image = set(range(3, 39))
        for i, n in enumerate((2, 29)):
            back = image - set(obj[i].nonzero().flatten().tolist())
            assert set(reg["background"][i].nonzero().flatten().tolist()) == back
            assert len(back) == 36 - n
        rng = np.random.default_rng(seed)
        for i, n in enumerate((2, 29)):
            want = rng.choice(np.arange(3, 39), size=n, replace=False)
            assert set(reg["random"][i].nonzero().flatten().tolist()) == set(want.tolist())
    low = image_regions(two, masks, threshold=0.2)
    assert int(low["object"][0].sum()) == 3 and int(low["random"][0].sum()) == 3
    assert not image_regions(two, masks)["background"][:, :3].any()


@torch.no_grad()
def ablated_prob(model, inp, which: torch.Tensor, base: torch.Tensor):
    """The model on the image embeddings with the chosen tokens' rows set to ``base``."""
    embeds = [e.clone() for e in model.image_embeddings(inp)]
    for i, e in enumerate(embeds):
        rows = which[i, FIRST : FIRST + 36]
        e[rows] = base
    logits = model(inp.with_image_embeds(embeds))[:, -1].double()
    p = logits.softmax(-1)[torch.arange(len(inp)), inp.answer_ids]
    return p, logits.argmax(-1) == inp.answer_ids


def test_region_ablation_by_hand(toy, two):
    """Each row's p_new is the model on hand-edited embeddings; background draws take
    min(n_object, n_background) tokens (example 1: all 7 of them, its object has 29), random
    ones n_object image tokens, both from ``default_rng(seed)`` in draw, example, background,
    random order; ``change`` = (p_new - p_clean) / p_clean; ``correct`` = argmax is the
    answer."""
    masks = masks_by_hand()
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(toy.cfg.d_model, generator=gen)
    res = region_ablation(toy, two, masks, baseline=base, n_draws=2, seed=5, progress=False)
    f = res.to_frame()
    assert res.to_frame() is res.frame
    with torch.no_grad():
        logits = toy(two)[:, -1].double()
    p_clean = logits.softmax(-1)[torch.arange(2), two.answer_ids]
    obj = object_patches(two, masks)
    image = two.groups["image"].bool()
    plans = {("object", 0): obj, ("all background", 0): image & ~obj}
    rng = np.random.default_rng(5)
    for d in range(2):
        bg, rnd = torch.zeros_like(image), torch.zeros_like(image)
        for i, n in enumerate((2, 29)):
            back = (image[i] & ~obj[i]).nonzero().flatten().numpy()
            bg[i, rng.choice(back, size=min(n, len(back)), replace=False)] = True
            rnd[i, rng.choice(np.arange(3, 39), size=n, replace=False)] = True
        plans[("background", d)], plans[("random", d)] = bg, rnd
    assert list(dict.fromkeys(zip(f.region, f.draw, strict=True))) == list(plans)
    counts = {"object": [2, 29], "all background": [34, 7], "background": [2, 7],
              "random": [2, 29]}  # fmt: skip
    for (region, draw), which in plans.items():
        rows = f[(f.region == region) & (f.draw == draw)].sort_values("example")
        assert rows.example.tolist() == [0, 1]
        assert rows.n_tokens.tolist() == counts[region]
        p_new, correct = ablated_prob(toy, two, which, base)
        np.testing.assert_allclose(rows.p_clean, p_clean, rtol=1e-5)
        np.testing.assert_allclose(rows.p_new, p_new, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(rows.change, (p_new - p_clean) / p_clean, rtol=1e-3,
                                   atol=1e-6)  # fmt: skip
        assert rows.correct.tolist() == correct.double().tolist()
    assert len(f) == 2 * (2 + 2 * 2)


def test_region_ablation_default_baseline_is_the_mean_image_token(toy, two):
    """Without a baseline, the replacement is the mean of the batch's image embeddings."""
    masks = masks_by_hand()
    res = region_ablation(toy, two, masks, n_draws=1, progress=False).frame
    with torch.no_grad():
        mean = torch.cat(toy.image_embeddings(two)).mean(0)
    obj = object_patches(two, masks)
    p_new, _ = ablated_prob(toy, two, obj, mean)
    np.testing.assert_allclose(res[res.region == "object"].p_new, p_new, rtol=1e-4, atol=1e-7)


def test_summary_averages_draws_per_example_then_bootstraps_examples():
    """Object: changes -0.2, -0.6 -> mean -0.4; background: two draws per example, example 0
    (-0.1, -0.3) -> -0.2 and example 1 (0, -0.2) -> -0.1, mean -0.15, and with two examples
    the 95 % band is the two per-example means (a bootstrap of the four rows would give
    -0.3 to 0). Accuracy likewise (example 0: 1 of 2 draws, example 1: 0 of 2: mean 0.25,
    band 0 to 0.5); tokens = mean count."""
    rows = [("object", 0, 0, 4, -0.2, 1.0), ("object", 0, 1, 6, -0.6, 0.0),
            ("background", 0, 0, 4, -0.1, 1.0), ("background", 1, 0, 4, -0.3, 0.0),
            ("background", 0, 1, 2, 0.0, 0.0), ("background", 1, 1, 2, -0.2, 0.0)]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["region", "draw", "example", "n_tokens", "change",
                                        "correct"])  # fmt: skip
    s = RegionAblationResult(frame).summary().set_index("region")
    assert s.index.tolist() == ["object", "background"]
    assert s.loc["object", "mean"] == pytest.approx(-0.4)
    assert s.loc["background", "mean"] == pytest.approx(-0.15)
    assert (s.loc["background", "low"], s.loc["background", "high"]) == pytest.approx((-0.2, -0.1))
    assert (s.loc["object", "low"], s.loc["object", "high"]) == pytest.approx((-0.6, -0.2))
    assert s.loc["background", "accuracy"] == pytest.approx(0.25)
    assert (s.loc["background", "accuracy_low"], s.loc["background", "accuracy_high"]) == (
        pytest.approx((0.0, 0.5))
    )
    assert s.loc["object", "accuracy"] == pytest.approx(0.5)
    assert s.loc["object", "tokens"] == 5 and s.loc["background", "tokens"] == 3
    assert s.n.tolist() == [2, 2]
    fig = RegionAblationResult(frame).plot()
    bars = fig.axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], [-0.4, -0.15])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["object", "background"]
