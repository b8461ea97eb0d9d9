"""TransformerLens' cache semantics on HookedLVLM: ``run_with_cache(pos_slice=)`` slices the
position axis of every activation (the query axis of scores and patterns), and every cached
activation, the image embeddings included, is batch-first, so ``ActivationCache``'s
``remove_batch_dim``, ``apply_slice_to_batch_dim`` and per-example slicing pick the right
rows; on the toy and on a tiny grouped-query checkpoint, with a text prompt and an image input."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.utilities import Slice

from lvlm_lens.model.caching import image_side_hooks
from tests.helpers import PROMPTS, attention_layers, noise_image, toy_or_gqa
from tests.model.tl_parity import parity

TEXT = "what is the main object in this image ?"


@pytest.fixture(scope="module", params=["toy", "qwen2-gqa"])
def model(request, tiny_checkpoint):
    return toy_or_gqa(request.param, tiny_checkpoint)


def images(model):
    """Two examples with images of different sizes (and so, on the GQA checkpoint, different
    image-token counts)."""
    return model.prepare([noise_image(48, 48, 3), noise_image(30, 60, 4)], PROMPTS)


def position_axis_by_size(full: torch.Tensor, t: int) -> int:
    """The position axis found from the shape alone: the first axis after the batch of size
    ``t`` (for ``[batch, head, q, k]`` patterns, the query axis)."""
    axes = [a for a in range(1, full.ndim) if full.shape[a] == t]
    assert axes, f"no axis of size {t} in {tuple(full.shape)}"
    if len(axes) > 1:
        assert full.ndim == 4 and axes == [2, 3], f"ambiguous position axis in {full.shape}"
    return axes[0]


@parity("run_with_cache(pos_slice=)", "works", "slices the position axis of every activation "
        "(query axis of hook_attn_scores / hook_pattern), hook_rot_q / hook_rot_k and the image "
        "embeddings included, where TL's rule by hook name slices hook_rot_q's head axis")
@pytest.mark.parametrize("kind", ["text", "image"])
@pytest.mark.parametrize("pos", [-1, (1, 4), [0, 2, 3]])
def test_pos_slice_slices_every_position_axis(model, kind, pos):
    inp = model.to_tokens(TEXT) if kind == "text" else images(model)
    t = inp.shape[1]
    _, full = model.run_with_cache(inp)
    _, cut = model.run_with_cache(inp, pos_slice=pos)
    assert set(cut.keys()) == set(full.keys())
    assert f"blocks.{attention_layers(model)[0]}.attn.hook_rot_q" in full.keys()
    if kind == "image":
        assert "hook_image_embeds" in full.keys()
    whole = image_side_hooks(model.cfg)  # cross-attention's image side: no position axis
    for name in full.keys():
        if name in whole:
            assert torch.equal(cut[name], full[name]), name
            continue
        axis = position_axis_by_size(full[name], t)
        assert torch.equal(cut[name], Slice.unwrap(pos).apply(full[name], dim=axis)), name


@parity("run_with_cache(remove_batch_dim=)", "works", "with pos_slice too; refused with a "
        "ValueError for a batch of more than one")
@pytest.mark.parametrize("kind", ["text", "image"])
def test_remove_batch_dim_with_pos_slice(model, kind):
    inp = model.to_tokens(TEXT) if kind == "text" else images(model).select(1)
    _, full = model.run_with_cache(inp)
    _, one = model.run_with_cache(inp, remove_batch_dim=True, pos_slice=(1, 3))
    assert not one.has_batch_dim
    for name in full.keys():
        if name in image_side_hooks(model.cfg):
            assert torch.equal(one[name], full[name][0]), name
            continue
        axis = position_axis_by_size(full[name], inp.shape[1])
        want = Slice.unwrap((1, 3)).apply(full[name][0], dim=axis - 1)
        assert torch.equal(one[name], want), name


@parity("ActivationCache.apply_slice_to_batch_dim / remove_batch_dim", "differs",
        "work on image inputs: every activation is batch-first, hook_image_embeds too, which "
        "fires [batch, pos, d_model] (each image embedding at its position, zero at text "
        "positions) where it used to fire a flat [n_image_tokens, d_model]")
def test_image_embeds_are_batch_first_for_cache_utilities(model):
    inp = images(model)
    b, t = inp.shape
    _, cache = model.run_with_cache(inp)
    embeds = cache["hook_image_embeds"]
    image = inp.input_ids == model.cfg.image_token_id
    cross = model.cfg.decoder.cross_attention
    if cross is None:
        assert embeds.shape == (b, t, model.cfg.d_model)
        assert torch.equal(embeds[image], cache["hook_embed"][image])
        assert torch.equal(embeds[~image], torch.zeros_like(embeds[~image]))
    else:  # the image side cross-attention reads, [batch, image_pos, d_model]: its keys' input
        layer = cross.layers[0]
        keys = model.blocks[layer].cross_attn.image_kv(embeds, hooked=False)[0]
        assert embeds.shape[::2] == (b, model.cfg.d_model) and embeds.shape[1] != t
        torch.testing.assert_close(keys.transpose(1, 2),
                                   cache[f"blocks.{layer}.cross_attn.hook_k"])  # fmt: skip
    for e in range(b):
        row = cache.apply_slice_to_batch_dim(e)
        assert not row.has_batch_dim
        for name in cache.keys():  # every entry loses its batch axis and keeps row e
            assert torch.equal(row[name], cache[name][e]), name
        alone = cache.apply_slice_to_batch_dim([e])
        alone.remove_batch_dim()
        assert torch.equal(alone["hook_image_embeds"], embeds[e])
    # the image embeddings of example 1 run alone are those of its row in the batch
    _, single = model.run_with_cache(inp.select(1))
    single.remove_batch_dim()
    if cross is not None:  # its images' part of the image side (each example one image here)
        torch.testing.assert_close(single["hook_image_embeds"], embeds[1])
        return
    mine = inp.select(1).input_ids[0] == model.cfg.image_token_id
    torch.testing.assert_close(single["hook_image_embeds"][mine], embeds[1][image[1]])


@parity("run_with_cache", "works", "its logits equal model(x) bit for bit: where hooks only "
        "read hook_attn_scores / hook_pattern, z comes from the same fused kernels as a plain "
        "forward (gradients still flow through pattern @ v); an edited pattern gives "
        "pattern @ v of the edit")
@pytest.mark.parametrize("kind", ["text", "image"])
@pytest.mark.parametrize("grad", [False, True])
def test_run_with_cache_logits_equal_forward_bit_for_bit(model, kind, grad):
    inp = model.to_tokens(TEXT) if kind == "text" else images(model)
    with torch.set_grad_enabled(grad):
        plain = model(inp)
        cached, cache = model.run_with_cache(inp)
        only_patterns, _ = model.run_with_cache(inp, names_filter=lambda n: "pattern" in n)
    layer = attention_layers(model)[0]
    assert f"blocks.{layer}.attn.hook_pattern" in cache.keys()
    assert torch.equal(cached, plain) and torch.equal(only_patterns, plain)
    assert cached.requires_grad == grad
    # the cached pattern is the one the run used: z from it is the cached hook_z
    attn = model.blocks[layer].attn
    v = cache[f"blocks.{layer}.attn.hook_v"].repeat_interleave(
        model.cfg.n_heads // model.cfg.n_key_value_heads, dim=2)
    z = torch.einsum("bhqk,bkhd->bqhd", cache[f"blocks.{layer}.attn.hook_pattern"], v)
    gate = f"blocks.{layer}.attn.hook_gate"
    if gate in cache.keys():  # Qwen3.5's output gate: hook_z is the gated output W_O reads
        z = z * torch.sigmoid(cache[gate])
    torch.testing.assert_close(z, cache[f"blocks.{layer}.attn.hook_z"], atol=1e-5, rtol=1e-4)
    assert attn.cfg.fused_attention


def test_edited_pattern_and_backward_hooks_still_take_effect(model):
    inp = images(model)
    plain = model(inp)
    name = "blocks.1.attn.hook_pattern"

    def uniform(pattern, hook):  # in place: every query attends equally to keys 0..q
        causal = torch.ones_like(pattern).tril()
        pattern.copy_(causal / causal.sum(-1, keepdim=True))

    edited = model.run_with_hooks(inp, fwd_hooks=[(name, uniform)])
    assert (edited - plain).abs().max() > 1e-3
    # the gradient of the loss reaches the pattern through the cached run (TL's incl_bwd)
    loss, cache = model.run_with_cache(inp, return_type="loss", incl_bwd=True,
                                       names_filter=lambda n: n == name)
    grad = cache[name + "_grad"]
    assert grad.shape == cache[name].shape and grad.abs().max() > 0
    torch.testing.assert_close(loss, model(inp, return_type="loss"), atol=0, rtol=0)
