"""Object / background / random image tokens and image-token ablation at matched counts."""

from __future__ import annotations

import numpy as np
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.analysis import image_regions, object_patches, region_ablation
from lvlm_lens.data import patch_grid_mask
from lvlm_lens.interventions import ablate_image_tokens, mean_image_token
from lvlm_lens.interventions.metrics import answer_prob
from tests.helpers import PROMPTS, noise_image


def test_object_tokens_follow_the_patch_grid(toy, toy_inp, toy_records):
    obj = object_patches(toy_inp, [r.mask for r in toy_records])
    for i, r in enumerate(toy_records):
        grid = patch_grid_mask(r.mask, 6).flatten()
        np.testing.assert_array_equal(obj[i][toy_inp.groups["image"][i]].numpy(), grid.numpy())
    regions = image_regions(toy_inp, [r.mask for r in toy_records], seed=1)
    assert torch.equal(regions["object"].sum(1), regions["random"].sum(1))
    assert not (regions["object"] & regions["background"]).any()
    assert torch.equal(regions["object"] | regions["background"], toy_inp.groups["image"])


def test_high_res_tiles_get_object_tokens(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-next-mistral"))
    inp = model.prepare([noise_image(20, 28, 1)], [PROMPTS[0]])
    mask = np.zeros((20, 28), dtype=bool)
    mask[:, :14] = True  # left half of the picture
    obj = object_patches(inp, [mask])[0]
    from lvlm_lens.viz import image_grids

    base, hires = image_grids(inp)
    for grid in (base, hires):
        cols = grid.positions.shape[1]
        is_obj = obj[torch.as_tensor(grid.positions)].numpy()
        assert is_obj[:, : cols // 2].all() and not is_obj[:, cols // 2 :].any()


def test_matched_counts_and_whole_image_equals_ablating_every_image_token(toy, toy_inp,
                                                                          toy_records):
    masks = [r.mask for r in toy_records]
    res = region_ablation(toy, toy_inp, masks, n_draws=2, progress=False)
    f = res.to_frame()
    n_obj = f[f.region == "object"].set_index("example").n_tokens
    for region in ("background", "random"):
        part = f[f.region == region]
        assert (part.n_tokens.values == n_obj.loc[part.example].values).all()
    assert set(res.summary().region) == {"object", "all background", "background", "random"}
    # a mask covering the whole picture: "object" = every image token
    full = [np.ones_like(m) for m in masks]
    whole = region_ablation(toy, toy_inp, full, n_draws=1, progress=False).frame
    mean = mean_image_token(toy, toy_inp)
    logits = ablate_image_tokens(toy, toy_inp, "image", mean)[:, -1]
    p = answer_prob(logits, toy_inp.answer_ids)
    np.testing.assert_allclose(whole[whole.region == "object"].p_new.values, p.detach().numpy(),
                               rtol=1e-5, atol=1e-7)
