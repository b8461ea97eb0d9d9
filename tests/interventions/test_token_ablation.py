"""Image-token ablation on hook_image_embeds."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.interventions.metrics import answer_prob
from lvlm_lens.interventions.token_ablation import (
    ImageBaseline,
    ablate_image_tokens,
    image_token_mask,
    mean_image_baseline,
    mean_image_token,
    token_ablation_hooks,
)
from tests.helpers import PROMPTS, noise_image

SIZES = [(20, 28), (30, 14)]


def batch(model, seed):
    images = [noise_image(h, w, seed + i) for i, (h, w) in enumerate(SIZES)]
    return model.prepare(images, PROMPTS, answers=["star", "circle"])


@pytest.fixture(
    scope="module", params=["llava-llama", "llava-onevision-qwen2", "qwen2-vl", "gemma3"]
)
def model(request, tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint(request.param))


@pytest.fixture(scope="module")
def inp(model):
    return batch(model, 1)


def test_ablating_no_token_is_the_clean_run(model, inp):
    clean = model(inp)
    none = torch.zeros(inp.shape, dtype=torch.bool)
    mean = mean_image_token(model, inp)
    assert torch.equal(ablate_image_tokens(model, inp, none, mean), clean)
    assert torch.equal(ablate_image_tokens(model, inp, [], mean), clean)


def test_all_tokens_from_another_image_is_a_run_on_that_image(model, inp):
    other = batch(model, 11)
    assert torch.equal(other.input_ids, inp.input_ids)  # same image-token layout
    expected = model(other)
    assert (model(inp) - expected).abs().max() > 1e-3  # the images differ
    real = inp.attention_mask.bool()
    for baseline in (other, torch.cat(model.image_embeddings(other))):
        ablated = ablate_image_tokens(model, inp, "image", baseline)
        assert (ablated - expected)[real].abs().max() <= 1e-5


def test_some_tokens_equal_hand_edited_embeddings(model, inp):
    image = inp.groups["image"]
    which = image & (torch.rand(image.shape, generator=torch.Generator().manual_seed(0)) < 0.3)
    other = batch(model, 11)
    ablated = ablate_image_tokens(model, inp, which, other)
    # the same edit made by hand, image by image
    embeds = model.image_embeddings(inp)
    theirs = model.image_embeddings(other)
    flat_mask = image_token_mask(inp, which)
    edited, start = [], 0
    for mine, their in zip(embeds, theirs, strict=True):
        m = flat_mask[start : start + mine.shape[0], None]
        edited.append(torch.where(m, their, mine))
        start += mine.shape[0]
    by_hand = model(inp.with_image_embeds(edited))
    assert (ablated - by_hand)[inp.attention_mask.bool()].abs().max() <= 1e-5


def test_mean_token_ablation_changes_the_answer(model, inp):
    dataset = [batch(model, s) for s in (3, 5, 7)]
    mean = mean_image_token(model, dataset)
    flat = torch.cat([e for d in dataset for e in model.image_embeddings(d)])
    assert torch.allclose(mean, flat.mean(0), atol=1e-6)
    clean = answer_prob(model(inp), inp.answer_ids)
    logits = ablate_image_tokens(model, inp, "image", mean)
    ablated = answer_prob(logits, inp.answer_ids)
    assert ((ablated - clean).abs() / clean > 1e-2).all()  # answer probabilities are ~1/vocab
    # known answer: every image token replaced by the mean token
    n = [c.shape[0] for c in inp.image_coords]
    by_hand = model(inp.with_image_embeds([mean.expand(k, -1) for k in n]))
    assert (logits - by_hand)[inp.attention_mask.bool()].abs().max() <= 1e-5


def test_positions_and_one_image_tiled(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))  # fixed tokens per image
    inp = batch(model, 1)
    one = model.prepare(noise_image(20, 28, 9), PROMPTS[0])
    tile = model.image_embeddings(one)[0]
    ablated = ablate_image_tokens(model, inp, "image", tile)
    expected = model(inp.with_image_embeds([tile, tile]))
    assert (ablated - expected)[inp.attention_mask.bool()].abs().max() <= 1e-5
    # sequence positions (applied to every example of the batch) select those image tokens
    single = inp.select(1)
    pos = single.positions("image")[[0, 2, 5]]
    flat = image_token_mask(single, pos)
    assert flat.sum() == 3 and flat[[0, 2, 5]].all()
    assert torch.equal(image_token_mask(single, pos.tolist()), flat)
    with pytest.raises(ValueError, match="non-image"):
        image_token_mask(inp, pos)  # left padding: not image tokens in the other example


def test_clear_errors(model, inp):
    mean = mean_image_token(model, inp)
    with pytest.raises(ValueError, match="non-image"):
        token_ablation_hooks(model, inp, inp.groups["final"], mean)
    with pytest.raises(KeyError, match="unknown token group"):
        token_ablation_hooks(model, inp, "objects", mean)
    with pytest.raises(ValueError, match="shape"):
        token_ablation_hooks(model, inp, torch.ones(5, dtype=torch.bool), mean)
    with pytest.raises(ValueError, match="out of range"):
        token_ablation_hooks(model, inp, [10_000], mean)
    with pytest.raises(ValueError, match=rf"positions \[{inp.shape[1]}\] out of range"):
        token_ablation_hooks(model, inp, [inp.shape[1]], mean)  # one past the last column
    with pytest.raises(ValueError, match="out of range"):
        token_ablation_hooks(model, inp, [-1], mean)
    with pytest.raises(ValueError, match="non-image"):
        token_ablation_hooks(model, inp, [0], mean)  # column 0 exists but holds no image token
    with pytest.raises(ValueError, match="baseline has 3 image tokens"):
        token_ablation_hooks(model, inp, "image", torch.zeros(3, model.cfg.d_model))
    text_only = model.prepare(None, "USER: what is this ? ASSISTANT:")
    with pytest.raises(ValueError, match="no image tokens"):
        mean_image_token(model, [text_only])


def test_flat_masks_text_only_inputs_and_embeddings_without_coordinates(model, inp):
    """A flat mask over the batch's image tokens equals the same [batch, pos] mask; inputs
    without images are skipped by the mean token; per-image baselines tile over embeddings
    even when the input carries no image coordinates."""
    which = inp.groups["image"] & (torch.arange(inp.shape[1]) % 3 == 0)
    flat = image_token_mask(inp, which)
    assert flat.shape == (int(inp.groups["image"].sum()),)
    assert torch.equal(image_token_mask(inp, flat), flat)
    other = batch(model, 11)
    assert torch.equal(ablate_image_tokens(model, inp, flat, other),
                       ablate_image_tokens(model, inp, which, other))  # fmt: skip
    text_only = model.prepare(None, "USER: what is this ? ASSISTANT:")
    with_text = mean_image_token(model, [inp, text_only, other])
    assert torch.allclose(with_text, mean_image_token(model, [inp, other]), atol=1e-6)
    if model.cfg.lvlm_type == "llava":  # same token count per image: one image's rows tile
        embeds = model.image_embeddings(inp)
        bare = replace(inp.with_image_embeds(embeds), image_coords=[])
        tile = model.image_embeddings(other)[0]
        got = ablate_image_tokens(model, bare, "image", tile)
        want = model(inp.with_image_embeds([tile, tile]))
        assert (got - want)[inp.attention_mask.bool()].abs().max() <= 1e-5




@pytest.fixture(scope="module")
def qwen3(tiny_checkpoint):
    """Qwen3-VL adds DeepStack features of the image at its positions in early layers."""
    return HookedLVLM.from_pretrained(tiny_checkpoint("qwen3-vl"))


def test_qwen3_vl_another_image_replaces_its_deepstack_features_too(qwen3):
    inp, other = batch(qwen3, 1), batch(qwen3, 11)
    assert torch.equal(other.input_ids, inp.input_ids)
    expected, real = qwen3(other), inp.attention_mask.bool()
    assert (qwen3(inp) - expected)[real].abs().max() > 1e-3
    embeds, deep = qwen3.image_features(other)
    tensors = ImageBaseline(torch.cat(embeds), [torch.cat(d) for d in deep])
    for baseline in (other, tensors):
        ablated = ablate_image_tokens(qwen3, inp, "image", baseline)
        assert (ablated - expected)[real].abs().max() <= 1e-5
    with pytest.raises(ValueError, match="DeepStack"):  # embeddings alone would keep the image
        ablate_image_tokens(qwen3, inp, "image", torch.cat(embeds))


def test_qwen3_vl_mean_token_equals_hand_edited_embeddings_and_deepstack(qwen3):
    inp = batch(qwen3, 1)
    dataset = [batch(qwen3, s) for s in (3, 5)]
    mean = mean_image_baseline(qwen3, dataset)
    feats = [qwen3.image_features(d) for d in dataset]
    assert torch.allclose(mean.embeds, torch.cat([e for f in feats for e in f[0]]).mean(0),
                          atol=1e-6)
    image = inp.groups["image"]
    which = image & (torch.rand(image.shape, generator=torch.Generator().manual_seed(0)) < 0.4)
    ablated = ablate_image_tokens(qwen3, inp, which, mean)
    # by hand: per layer, the mean DeepStack feature over the same reference tokens
    flat_mask = image_token_mask(inp, which)
    embeds, deep = qwen3.image_features(inp)

    def edit(mine: list, value: torch.Tensor) -> list:
        counts = [e.shape[0] for e in mine]
        m = flat_mask[:, None].split(counts)
        return [torch.where(k, value, e) for k, e in zip(m, mine, strict=True)]

    layers = range(len(deep))
    deep_means = [torch.cat([d for f in feats for d in f[1][layer]]).mean(0) for layer in layers]
    hand = inp.with_image_embeds(edit(embeds, mean.embeds),
                                 [edit(deep[layer], deep_means[layer]) for layer in layers])
    real = inp.attention_mask.bool()
    assert (ablated - qwen3(hand))[real].abs().max() <= 1e-5
    assert (ablated - qwen3(inp))[real].abs().max() > 1e-3
    assert torch.equal(mean_image_token(qwen3, dataset), mean.embeds)


def test_qwen3_vl_hooks_refuse_another_batch_naming_both_sizes(qwen3):
    """Hooks built for one batch and run on the same images under longer prompts, or on one
    example of the batch: the image embeddings (batch-first, ``[batch, pos, d_model]``) and the
    DeepStack features no longer fit, and the refusal names both shapes."""
    inp = batch(qwen3, 1)
    images = [noise_image(h, w, 1 + i) for i, (h, w) in enumerate(SIZES)]
    longer = qwen3.prepare(images, [p + " please answer" for p in PROMPTS])
    assert longer.shape[1] > inp.shape[1]
    hooks = token_ablation_hooks(qwen3, inp, "image", mean_image_baseline(qwen3, [inp]))

    def want(what, other):
        return (rf"ablation built for a {tuple(inp.shape)} batch got {what} of "
                rf"{tuple(other.shape)}").replace("(", r"\(").replace(")", r"\)")

    with pytest.raises(ValueError, match=want("image embeddings", longer)):
        qwen3.run_with_hooks(longer, fwd_hooks=hooks)
    with pytest.raises(ValueError, match=want("DeepStack features", longer)):
        qwen3.run_with_hooks(longer, fwd_hooks=hooks[1:])
    one = inp.select([0])
    with pytest.raises(ValueError, match=want("image embeddings", one)):
        qwen3.run_with_hooks(one, fwd_hooks=hooks)
