"""Baselines on several images per example, mixed image counts and any-resolution image sizes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline, query_scope
from lvlm_lens.interventions.engine import AblationEngine, run_reference
from tests.helpers import noise_image

TWO = [
    "USER: <image>\n<image>\nwhat is this ? ASSISTANT:",
    "USER: <image>\nand <image>\nwhat is the main object ? ASSISTANT:",
]
MIXED = ["USER: <image>\nwhat is this ? ASSISTANT:", TWO[1]]
REFS = [noise_image(20, 20, 60), noise_image(20, 20, 61)]


@pytest.fixture(scope="module", params=["llava-llama", "llava-onevision-qwen2"])
def model(request, tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint(request.param))


def two_images(model, mixed=False, prompts=None):
    images = [[noise_image(20, 20, 1), noise_image(20, 20, 2)],
              [noise_image(20, 20, 3), noise_image(20, 20, 4)]]
    if mixed:
        images[0] = images[0][:1]
    return model.prepare(images, prompts or (MIXED if mixed else TWO))


def baseline(model, inp, cfg):
    return compute_baseline(model, inp, cfg, baseline_image=noise_image(20, 20, 5),
                            reference_images=REFS, progress=False)


@pytest.mark.parametrize("mixed", [False, True], ids=["2+2 images", "1+2 images"])
@pytest.mark.parametrize("scope", ["text", "all"])
@pytest.mark.parametrize("kind", ["mean", "image", "blank"])
def test_engine_equals_reference_with_several_images(model, kind, scope, mixed):
    inp = two_images(model, mixed)
    assert inp.images_per_example == ([1, 2] if mixed else [2, 2])
    cfg = HeadAblation(baseline=kind, scope=scope)
    base = baseline(model, inp, cfg)
    masks = sample_masks(24, model.cfg.n_layers, model.cfg.n_heads, rate=0.3, seed=4)
    fast = AblationEngine(model, inp, base, cfg, metric="logit_diff").run(masks, progress=False)
    ref = run_reference(model, inp, masks, base, cfg, metric="logit_diff", progress=False)
    assert (fast - ref).abs().max() <= 1e-4
    assert ref.std() > 1e-2


@pytest.mark.parametrize("mixed", [False, True], ids=["2+2 images", "1+2 images"])
def test_every_head_ablated_equals_a_run_on_the_baseline_images(model, mixed):
    """Ablating every head with an image (or blank) baseline is a run with that image in every
    image slot, for the queries after the last image (images adjacent, so that no clean text
    token sits between them)."""
    adjacent = "USER: <image><image>\nwhat is this ? ASSISTANT:"
    inp = two_images(model, mixed, [MIXED[0] if mixed else adjacent, adjacent])
    every = torch.ones(1, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    after = query_scope(inp, inp.groups["image"], "text")
    x = noise_image(20, 20, 9)
    gray = Image.new("RGB", (20, 20), (128, 128, 128))
    for kind, stand_in in (("image", x), ("blank", gray)):
        cfg = HeadAblation(baseline=kind)
        base = compute_baseline(model, inp, cfg, baseline_image=x, progress=False)
        fast = AblationEngine(model, inp, base, cfg).run(every, progress=False)[:, 0]
        on = model(model.prepare([[stand_in] * n for n in inp.images_per_example], inp.texts))
        answers = model(inp)[:, -1].argmax(-1)
        assert torch.allclose(fast, on[torch.arange(2), -1, answers], atol=1e-4)
        ref = run_reference(model, inp, every, base, cfg, metric="logit", progress=False)
        assert torch.allclose(ref[:, 0], fast, atol=1e-4)
        assert (on - model(inp))[after].abs().max() > 1e-3


def test_mean_of_one_reference_twice_is_that_image(model):
    inp = two_images(model, mixed=True)
    mean = compute_baseline(model, inp, HeadAblation(baseline="mean"),
                            reference_images=[REFS[0], REFS[0]], progress=False)
    image = compute_baseline(model, inp, HeadAblation(baseline="image"), baseline_image=REFS[0],
                             progress=False)
    for a, b in zip(mean.keys + mean.values, image.keys + image.values, strict=True):
        assert (a - b)[:, :, inp.groups["image"].any(0)].abs().max() <= 1e-5
    per_example = compute_baseline(model, inp, HeadAblation(baseline="image"),
                                   baseline_image=[REFS[0], [REFS[0], REFS[0]]], progress=False)
    assert all(torch.equal(a, b) for a, b in zip(image.keys, per_example.keys, strict=True))


@pytest.mark.parametrize("family", ["llava-next-vicuna", "llava-onevision-qwen2"])
def test_mean_baseline_on_images_of_different_sizes(tiny_checkpoint, family):
    """Any-resolution models: the images (one in example 0, two in example 1) have different
    sizes, token layouts different from each other and from the reference images'; each
    reference is resized to the image it stands in for."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint(family))
    images = [[noise_image(20, 28, 1)], [noise_image(36, 20, 2), noise_image(16, 40, 3)]]
    inp = model.prepare(images, MIXED)
    assert len({c.shape[0] for c in inp.image_coords}) > 1
    refs = [noise_image(16, 16, 60), noise_image(40, 24, 61)]
    cfg = HeadAblation(baseline="mean")
    base = compute_baseline(model, inp, cfg, reference_images=refs, progress=False)
    masks = sample_masks(24, model.cfg.n_layers, model.cfg.n_heads, rate=0.3, seed=4)
    fast = AblationEngine(model, inp, base, cfg).run(masks, progress=False)
    ref = run_reference(model, inp, masks, base, cfg, progress=False)
    assert (fast - ref).abs().max() <= 1e-4 and ref.std() > 1e-2
    # known value: one reference, every head ablated = a run on the resized reference
    adjacent = ["USER: <image>\nwhat is this ? ASSISTANT:",
                "USER: <image><image>\nwhat is the main object ? ASSISTANT:"]
    inp = model.prepare(images, adjacent)
    one = compute_baseline(model, inp, cfg, reference_images=refs[:1], progress=False)
    every = torch.ones(1, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    fast = AblationEngine(model, inp, one, cfg).run(every, progress=False)[:, 0]
    answers = model(inp)[:, -1].argmax(-1)
    resized = [[refs[0].resize(im.size, Image.BICUBIC) for im in ims] for ims in images]
    on = model(model.prepare(resized, adjacent))
    assert torch.allclose(fast, on[torch.arange(2), -1, answers], atol=1e-4)


def test_qwen3_vl_baselines_carry_the_baseline_images_deepstack_features(tiny_checkpoint):
    """Qwen3-VL adds DeepStack features of the image in early layers. The baseline K/V come
    from runs on the baseline images, so they carry those images' DeepStack features: every
    head ablated is a run on the (resized) baseline image, with ``image`` and with ``mean``
    (one image per example: no clean token sits between images)."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen3-vl"))
    images, prompts = [noise_image(20, 28, 1), noise_image(36, 20, 2)], [MIXED[0]] * 2
    inp = model.prepare(images, prompts)
    x = noise_image(16, 40, 9)
    on = model(model.prepare([x.resize(im.size, Image.BICUBIC) for im in images], prompts))
    answers = model(inp)[:, -1].argmax(-1)
    expected = on[torch.arange(2), -1, answers]
    assert (on - model(inp))[:, -1].abs().max() > 1e-3
    every = torch.ones(1, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    for kind, kw in (("image", {"baseline_image": x}), ("mean", {"reference_images": [x, x]})):
        cfg = HeadAblation(baseline=kind)
        base = compute_baseline(model, inp, cfg, progress=False, **kw)
        fast = AblationEngine(model, inp, base, cfg).run(every, progress=False)[:, 0]
        ref = run_reference(model, inp, every, base, cfg, metric="logit", progress=False)[:, 0]
        assert torch.allclose(fast, expected, atol=1e-4)
        assert torch.allclose(ref, expected, atol=1e-4)
