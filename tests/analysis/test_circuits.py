"""Activation, attribution and path patching with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.analysis import (
    PatchingConfig,
    activation_patching,
    attribution_patching,
    path_patching,
)
from tests.helpers import PROMPTS, noise_image

FAST = dict(progress=False)


def test_patching_the_whole_clean_residual_restores_the_clean_metric(toy, toy_inp,
                                                                     toy_corrupted):
    res = activation_patching(toy, toy_inp, toy_corrupted,
                              PatchingConfig(components=("resid", "mlp"),
                                             groups=("all", "question"), **FAST))
    s = res.summary()
    whole = s[(s.component == "resid") & (s.group == "all")]
    np.testing.assert_allclose(whole.restored, 1.0, atol=1e-5)
    per_ex = res.frame[(res.frame.component == "resid") & (res.frame.group == "all")]
    np.testing.assert_allclose(per_ex.restored, 1.0, atol=1e-4)
    # the question's embeddings are the same in both runs: patching them changes nothing
    q0 = s[(s.component == "resid") & (s.group == "question") & (s.layer == 0)]
    np.testing.assert_allclose(q0.restored, 0.0, atol=1e-6)
    assert (res.clean > res.corrupted).all()  # logit diff: clean answer wins on clean images
    fig = res.plot()
    assert fig.__class__.__name__ == "Figure"


def test_head_patching_equals_transformer_lens_head_sweep(toy, toy_inp, toy_corrupted):
    """Heads at all positions against TL's own ``get_act_patch_attn_head_out_all_pos``."""
    from lvlm_lens.interventions import patch_attn_heads

    res = activation_patching(toy, toy_inp, toy_corrupted,
                              PatchingConfig(components=("heads",), groups=("all",), **FAST))
    ours = res.frame.groupby(["layer", "head"]).delta.mean().unstack().to_numpy()
    ours = ours + res.corrupted.mean()
    # TL's metric: logit diff against the best other token, averaged over the batch; ours
    # uses the corrupted answer as the foil, so compare with the same metric
    from lvlm_lens.analysis.circuits import metric_fn

    fn = metric_fn(toy, toy_inp, toy_corrupted, "logit_diff")
    tl = patch_attn_heads(toy, toy_inp, toy_corrupted, lambda logits: fn(logits[:, -1]).mean(),
                          normalize=False)
    np.testing.assert_allclose(ours, tl.numpy(), atol=1e-4)


def test_attribution_patching_equals_exact_patching_for_a_small_intervention(toy, toy_inp):
    """Clean = the image embeddings plus eps noise: the first-order estimate's error relative
    to the effects shrinks in proportion to eps (fp32 limits how small eps can go)."""
    inp = toy_inp.select([0, 1, 2])
    embeds = toy.image_embeddings(inp)
    cfg = PatchingConfig(components=("resid", "heads", "mlp"), groups=("all", "image"),
                         metric="logit", **FAST)
    errors = {}
    for eps in (3e-3, 3e-2):
        gen = torch.Generator().manual_seed(0)
        near = inp.with_image_embeds([e + eps * torch.randn(e.shape, generator=gen)
                                      for e in embeds])
        exact = activation_patching(toy, near, inp, cfg).frame
        approx = attribution_patching(toy, near, inp, cfg).frame
        assert (exact[["component", "layer", "head", "group", "example"]].values
                == approx[["component", "layer", "head", "group", "example"]].values).all()
        d_exact, d_approx = exact.delta.to_numpy(), approx.delta.to_numpy()
        assert np.abs(d_exact).max() > 0
        errors[eps] = np.abs(d_approx - d_exact).max() / np.abs(d_exact).max()
    assert errors[3e-3] < 0.05
    assert errors[3e-3] < errors[3e-2] / 4


def test_agreement_of_a_result_with_itself_is_one(toy, toy_inp, toy_corrupted):
    cfg = PatchingConfig(components=("mlp",), groups=("all",), **FAST)
    res = attribution_patching(toy, toy_inp, toy_corrupted, cfg)
    agree = res.agreement(res, n_boot=50)
    assert agree.spearman.item() == pytest.approx(1.0)


def test_path_patching_through_every_head_to_every_text_query_restores_the_clean_run(
        toy, toy_inp, toy_corrupted):
    every = [(layer, h) for layer in range(toy.cfg.n_layers) for h in range(toy.cfg.n_heads)]
    res = path_patching(toy, toy_inp, toy_corrupted, every, receivers="text", each=False)
    np.testing.assert_allclose(res.frame.restored, 1.0, atol=1e-4)
    some = path_patching(toy, toy_inp, toy_corrupted, [(1, 5), (0, 1)])
    s = some.summary().set_index("path")
    assert set(s.index) == {"L1H5 + L0H1", "L1H5", "L0H1", "all heads"}
    # the final token alone does not get everything: earlier text tokens carry image
    # information too
    final_only = some.frame[some.frame.path == "all heads"].restored.to_numpy()
    assert np.abs(final_only - 1).max() > 1e-3


def test_model_agnostic_on_any_resolution_tiles(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-onevision-qwen2"))
    prompts = [PROMPTS[0]] * 2
    clean = model.prepare([noise_image(20, 28, 1), noise_image(20, 28, 2)], prompts)
    corrupt = model.prepare([noise_image(20, 28, 3), noise_image(20, 28, 4)], prompts)
    res = activation_patching(model, clean, corrupt,
                              PatchingConfig(components=("resid",), groups=("all",),
                                             metric="logit", **FAST))
    np.testing.assert_allclose(res.frame.restored, 1.0, atol=1e-4)
    every = [(layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    path = path_patching(model, clean, corrupt, every, receivers="text", each=False,
                         metric="logit")
    np.testing.assert_allclose(path.frame.restored, 1.0, atol=1e-3)


def test_mismatched_pair_is_refused(toy, toy_inp):
    with pytest.raises(ValueError, match="same shape"):
        activation_patching(toy, toy_inp, toy_inp.select([0, 1]), PatchingConfig(**FAST))
