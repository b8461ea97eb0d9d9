"""The runner's shared baseline cache on any-resolution data whose images differ in size."""

from __future__ import annotations

import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.head_attribution import AttributionConfig
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.runner import BaselineCache
from tests.helpers import noise_image


def test_mean_baseline_cache_on_images_of_different_sizes(tiny_checkpoint, tmp_path):
    """20x28 and 24x32 give the same tokens but the reference images are resized to each size:
    each example gets its own baseline, equal to computing it directly."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-next-vicuna"))
    cfg = HeadAblation(baseline="mean")
    opts = RunOptions(out=str(tmp_path), attribution=AttributionConfig(ablation=cfg))
    refs = [noise_image(16, 16, 60), noise_image(40, 24, 61)]
    cache = BaselineCache(model, opts, refs, None)
    prompt = "USER: <image>\nwhat is this ? ASSISTANT:"
    inputs = [model.prepare(noise_image(h, w, i), prompt) for i, (h, w) in
              enumerate([(20, 28), (24, 32), (36, 20), (20, 28)])]
    assert torch.equal(inputs[0].input_ids, inputs[1].input_ids)
    for inp in inputs:
        direct = compute_baseline(model, inp, cfg, reference_images=refs, progress=False)
        cached = cache(inp)
        src = inp.groups["image"]
        for a, b in zip(cached.keys + cached.values, direct.keys + direct.values, strict=True):
            assert (a - b)[:, :, src[0]].abs().max() <= 1e-5
    assert len(cache.store) == 3  # the two 20x28 examples share one
