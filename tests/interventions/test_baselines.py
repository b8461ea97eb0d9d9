"""Ablation baselines checked on their own (the engine-vs-reference tests feed both sides the same
baseline, so a wrong baseline passes them): each against a known equivalent."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lvlm_lens import HookedLVLM
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.interventions.token_ablation import mean_image_token
from tests.helpers import PROMPTS, noise_image


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


def test_a_baseline_image_with_another_token_layout_is_refused(anyres):
    model, inp = anyres
    with pytest.raises(ValueError, match="different image-token layout.*same size"):
        compute_baseline(model, inp, HeadAblation(baseline="image"),
                         baseline_image=noise_image(40, 40, 5))  # fmt: skip


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
