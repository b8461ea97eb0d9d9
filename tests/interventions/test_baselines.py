"""Ablation baselines checked on their own (the engine-vs-reference tests feed both sides the same
baseline, so a wrong baseline passes them): each against a known equivalent; and baselines on
several images per example, mixed image counts and any-resolution image sizes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline, query_scope
from lvlm_lens.interventions.engine import AblationEngine, run_reference
from lvlm_lens.interventions.token_ablation import mean_image_token
from tests.helpers import PROMPTS, noise_image

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


@pytest.fixture(scope="module")
def llava(tiny_checkpoint):
    """Fixed image-token count: any reference image fits any example."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))
    return model, model.prepare([noise_image(20, 28, 1), noise_image(30, 14, 2)], PROMPTS)


@pytest.fixture(scope="module")
def anyres(tiny_checkpoint):
    """Any resolution, grouped-query attention: the token layout follows each image's size."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-onevision-qwen2"))
    return model, model.prepare([noise_image(20, 28, 1), noise_image(30, 14, 2)], PROMPTS)


def assert_same_kv(a, b, atol=1e-5) -> None:
    """Equal baseline keys and values at every source position of every layer."""
    assert torch.equal(a.source, b.source)
    src = a.source[:, None, :, None]
    for layer, (ka, kb, va, vb) in enumerate(zip(a.keys, b.keys, a.values, b.values, strict=True)):
        assert ((ka - kb) * src).abs().max() <= atol, f"keys, layer {layer}"
        assert ((va - vb) * src).abs().max() <= atol, f"values, layer {layer}"


def differs(a, b) -> float:
    src = a.source[:, None, :, None]
    return max(float(((ka - kb) * src).abs().max()) for ka, kb in zip(a.keys, b.keys, strict=True))


def test_mean_over_references_is_the_mean_of_their_image_baselines(llava):
    model, inp = llava
    x, y = noise_image(20, 20, 5), noise_image(24, 24, 6)
    image = lambda im: compute_baseline(  # noqa: E731
        model, inp, HeadAblation(baseline="image"), baseline_image=im
    )
    mean = lambda refs: compute_baseline(  # noqa: E731
        model, inp, HeadAblation(baseline="mean"), reference_images=refs
    )
    on_x, on_y = image(x), image(y)
    assert differs(on_x, on_y) > 1e-2  # the two images give different keys
    assert_same_kv(mean([x, x, x]), on_x)
    two = mean([x, y, y])
    for layer in range(model.cfg.n_layers):
        want_k = (on_x.keys[layer] + 2 * on_y.keys[layer]) / 3
        want_v = (on_x.values[layer] + 2 * on_y.values[layer]) / 3
        src = inp.groups["image"][:, None, :, None]
        assert ((two.keys[layer] - want_k) * src).abs().max() <= 1e-5
        assert ((two.values[layer] - want_v) * src).abs().max() <= 1e-5


def test_image_baseline_per_example(llava):
    """A list of baseline images gives example i the keys of image i."""
    model, inp = llava
    x, y = noise_image(20, 20, 5), noise_image(24, 24, 6)
    cfg = HeadAblation(baseline="image")
    both = compute_baseline(model, inp, cfg, baseline_image=[x, y])
    on_x = compute_baseline(model, inp, cfg, baseline_image=x)
    on_y = compute_baseline(model, inp, cfg, baseline_image=y)
    for layer in range(model.cfg.n_layers):
        assert torch.allclose(both.keys[layer][0], on_x.keys[layer][0], atol=1e-5)
        assert torch.allclose(both.keys[layer][1], on_y.keys[layer][1], atol=1e-5)
        assert torch.allclose(both.values[layer][1], on_y.values[layer][1], atol=1e-5)


@pytest.mark.parametrize("value", [128, 30])
def test_blank_is_a_gray_image_of_each_examples_size(anyres, value):
    model, inp = anyres
    sizes = [im.size for im in (noise_image(20, 28, 1), noise_image(30, 14, 2))]
    grays = [Image.new("RGB", size, (value,) * 3) for size in sizes]
    blank = compute_baseline(model, inp, HeadAblation(baseline="blank", blank_value=value))
    gray = compute_baseline(model, inp, HeadAblation(baseline="image"), baseline_image=grays)
    assert_same_kv(blank, gray)
    own = [noise_image(20, 28, 1), noise_image(30, 14, 2)]
    clean = compute_baseline(model, inp, HeadAblation(baseline="image"), baseline_image=own)
    assert differs(blank, clean) > 1e-2


def test_blank_value_matters(anyres):
    model, inp = anyres
    a = compute_baseline(model, inp, HeadAblation(baseline="blank", blank_value=128))
    b = compute_baseline(model, inp, HeadAblation(baseline="blank", blank_value=30))
    assert differs(a, b) > 1e-3


def test_zero_baseline_is_zero_with_the_clean_layout(llava):
    model, inp = llava
    zero = compute_baseline(model, inp, HeadAblation(baseline="zero"))
    assert torch.equal(zero.source, inp.groups["image"])
    for k, v in zip(zero.keys, zero.values, strict=True):
        assert k.shape[0] == len(inp) and k.shape[2] == inp.shape[1] and not k.any() and not v.any()


def test_mean_image_token_over_batches_of_unequal_sizes_is_the_flat_mean(anyres):
    """One batch of one image and one of three images with different token counts: the mean
    weighs every image token once (not every batch, nor every image)."""
    model, _ = anyres
    first = model.prepare(noise_image(20, 28, 3), PROMPTS[0])
    second = model.prepare(
        [noise_image(30, 14, 4), noise_image(16, 16, 5), [noise_image(20, 20, 6)] * 2],
        [PROMPTS[1], PROMPTS[0], "USER: <image> <image>\nwhat is this ? ASSISTANT:"],
    )
    embeds = model.image_embeddings(first) + model.image_embeddings(second)
    counts = [e.shape[0] for e in embeds]
    assert len(set(counts)) > 1
    flat = torch.cat(embeds)
    got = mean_image_token(model, [first, second])
    assert torch.allclose(got, flat.mean(0), atol=1e-6)
    per_batch = (torch.cat(model.image_embeddings(first)).mean(0)
                 + torch.cat(model.image_embeddings(second)).mean(0)) / 2  # fmt: skip
    assert (per_batch - flat.mean(0)).abs().max() > 1e-4  # the test tells the two apart


def test_progress_bars_for_several_references(llava, capsys):
    model, inp = llava
    cfg = HeadAblation(baseline="mean")
    capsys.readouterr()
    compute_baseline(model, inp, cfg, reference_images=[noise_image(20, 20, 5)])
    mean_image_token(model, [inp])
    assert capsys.readouterr().err == ""  # one reference, one input: nothing to wait for
    compute_baseline(model, inp, cfg, reference_images=[noise_image(20, 20, s) for s in (5, 6)])
    assert "baseline K/V" in capsys.readouterr().err
    mean_image_token(model, [inp, inp])
    assert "mean image token" in capsys.readouterr().err


def test_a_baseline_image_of_another_size_is_resized_to_each_image(anyres):
    """Any resolution: a 40x40 stand-in gives the K/V of that image resized (bicubic) by hand to
    each example's image size, so the image-token layout is the example's."""
    model, _ = anyres
    own = [noise_image(20, 28, 1), noise_image(30, 18, 2)]  # no side below MIN_IMAGE_SIDE
    inp = model.prepare(own, PROMPTS)
    big = noise_image(40, 40, 5)
    sizes = [im.size for im in own]
    cfg = HeadAblation(baseline="image")
    got = compute_baseline(model, inp, cfg, baseline_image=big)
    by_hand = [big.resize(size, Image.BICUBIC) for size in sizes]
    assert_same_kv(got, compute_baseline(model, inp, cfg, baseline_image=by_hand))


def test_a_text_source_takes_only_baselines_that_do_not_replace_the_image(llava):
    model, inp = llava
    for baseline in ("image", "blank"):
        with pytest.raises(ValueError, match=f"baseline '{baseline}' replaces the image"):
            compute_baseline(model, inp, HeadAblation(baseline=baseline, source="question"),
                             baseline_image=noise_image(20, 20, 5))  # fmt: skip
    x = noise_image(20, 20, 5)
    mean = compute_baseline(model, inp, HeadAblation(baseline="mean", source="question"),
                            reference_images=[x])  # fmt: skip
    assert torch.equal(mean.source, inp.groups["question"])
    # a mean over one reference is that reference's K/V, at the question tokens too
    clean = compute_baseline(model, inp, HeadAblation(baseline="image", source="image"),
                             baseline_image=x)  # fmt: skip
    q = inp.groups["question"][:, None, :, None]
    for k_mean, k_x in zip(mean.keys, clean.keys, strict=True):
        assert ((k_mean - k_x) * q).abs().max() <= 1e-5


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
