"""LVLMInput.select / .to keep every field consistent, checked against ``prepare`` itself."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from tests.helpers import noise_image

# Three examples that differ in every field: image count (2, 0, 1), image sizes (hence image-token
# counts and coordinates), prompt length (hence left padding), a system text in one of them
# (token groups), answers and rendered texts.
IMAGES = [[noise_image(20, 28, 1), noise_image(30, 14, 2)], None, noise_image(16, 24, 3)]
PROMPTS = [
    "USER: <image> <image>\nwhat is this ? ASSISTANT:",
    "USER: what is the main object ? ASSISTANT:",
    "you are a helpful assistant . USER: <image>\ndescribe the shape ? ASSISTANT:",
]
ANSWERS = ["star", "circle", "square"]
SELECTIONS = [[2, 0], [1], [0], 2, slice(1, 3), [1, 2, 0]]


@pytest.fixture(scope="module", params=["llava-next-vicuna", "llava-llama"])
def model(request, tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint(request.param))


@pytest.fixture(scope="module")
def batch(model):
    inp = model.prepare(IMAGES, PROMPTS, answers=ANSWERS)
    assert inp.images_per_example == [2, 0, 1]
    assert len({int(n) for n in inp.attention_mask.sum(-1)}) == 3  # three paddings
    return inp


def indices_of(sel) -> list[int]:
    if isinstance(sel, int):
        return [sel]
    if isinstance(sel, slice):
        return list(range(len(PROMPTS)))[sel]
    return list(sel)


def assert_same_pixels(a: torch.Tensor | None, b: torch.Tensor | None) -> None:
    """Equal pixel values; any-resolution batches may pad the patch axis differently (zeros)."""
    assert (a is None) == (b is None)
    if a is None:
        return
    assert a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:]
    k = min(a.shape[1], b.shape[1]) if a.ndim == 5 else None
    if k is None:
        assert torch.equal(a, b)
        return
    assert torch.equal(a[:, :k], b[:, :k])
    assert not a[:, k:].any() and not b[:, k:].any()


@pytest.mark.parametrize("sel", SELECTIONS, ids=str)
def test_select_equals_preparing_the_examples_alone(model, batch, sel):
    idx = indices_of(sel)
    got = batch.select(sel)
    images = [IMAGES[i] for i in idx]
    want = model.prepare(images, [PROMPTS[i] for i in idx], answers=[ANSWERS[i] for i in idx])
    assert torch.equal(got.input_ids, want.input_ids)
    assert torch.equal(got.attention_mask, want.attention_mask)
    assert got.groups.keys() == want.groups.keys()
    for name in want.groups:
        assert torch.equal(got.groups[name], want.groups[name]), name
    assert_same_pixels(got.pixel_values, want.pixel_values)
    for field in ("image_sizes", "answer_ids"):
        a, b = getattr(got, field), getattr(want, field)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), field
    assert len(got.image_coords) == len(want.image_coords)
    assert all(torch.equal(a, b) for a, b in zip(got.image_coords, want.image_coords, strict=True))
    assert got.images_per_example == want.images_per_example
    assert got.texts == want.texts
    assert got.image_embeds is None
    assert model.to_str_tokens(got) == model.to_str_tokens(want)
    assert torch.allclose(model(got), model(want), atol=1e-5)


def test_select_keeps_precomputed_image_embeddings(model, batch):
    embeds = [torch.full((c.shape[0], model.cfg.d_model), float(i)) for i, c in
              enumerate(batch.image_coords)]  # fmt: skip
    got = batch.with_image_embeds(embeds).select([2, 0])
    assert [float(e[0, 0]) for e in got.image_embeds] == [2.0, 0.0, 1.0]  # example 2, then 0
    assert got.pixel_values is None
    want = model.prepare([IMAGES[2], IMAGES[0]], [PROMPTS[2], PROMPTS[0]])
    assert torch.allclose(model(got), model(want.with_image_embeds(got.image_embeds)), atol=1e-6)


def test_to_moves_every_tensor_and_keeps_the_rest(batch):
    moved = batch.with_image_embeds(
        [torch.randn(c.shape[0], 8) for c in batch.image_coords]
    ).to("meta")
    tensors = {
        "input_ids": moved.input_ids,
        "attention_mask": moved.attention_mask,
        "image_sizes": moved.image_sizes,
        "answer_ids": moved.answer_ids,
        **{f"groups[{k}]": v for k, v in moved.groups.items()},
        **{f"image_embeds[{i}]": e for i, e in enumerate(moved.image_embeds)},
    }
    for name, t in tensors.items():
        assert t.device.type == "meta", name
    with_pixels = batch.to("meta")
    assert with_pixels.pixel_values.device.type == "meta"
    assert with_pixels.pixel_values.shape == batch.pixel_values.shape
    for name in ("input_ids", "attention_mask", "image_sizes", "answer_ids"):
        before, after = getattr(batch, name), getattr(with_pixels, name)
        assert after.shape == before.shape and after.dtype == before.dtype, name
    assert with_pixels.groups.keys() == batch.groups.keys()
    assert with_pixels.texts == batch.texts
    assert with_pixels.images_per_example == batch.images_per_example
    assert all(torch.equal(a, b) for a, b in zip(with_pixels.image_coords, batch.image_coords,
                                                 strict=True))  # fmt: skip
