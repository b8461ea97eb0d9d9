"""TransformerLens' ActivationCache and patching on a HookedLVLM, with images."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

from lvlm_lens import HookedLVLM
from tests.helpers import PROMPTS, noise_image
from tests.model.tl_parity import parity


@pytest.fixture(scope="module", params=["llava-onevision-qwen2", "qwen2-vl", "qwen3-vl", "gemma3"])
def model(request, tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint(request.param))


@pytest.fixture(scope="module")
def inp(model):
    return model.prepare(
        [noise_image(20, 28, 1), noise_image(30, 14, 2)], PROMPTS, answers=["star", "circle"]
    )


def test_hook_names_and_shapes(model, inp):
    logits, cache = model.run_with_cache(inp)
    b, t = inp.shape
    cfg = model.cfg
    assert cache["hook_embed"].shape == (b, t, cfg.d_model)
    assert cache["hook_image_embeds"].shape == (b, t, cfg.d_model)  # batch-first, as TL's
    assert cache["blocks.1.attn.hook_q"].shape == (b, t, cfg.n_heads, cfg.d_head)
    assert cache["blocks.1.attn.hook_k"].shape == (b, t, cfg.n_key_value_heads, cfg.d_head)
    assert cache["blocks.1.attn.hook_pattern"].shape == (b, cfg.n_heads, t, t)
    assert cache["blocks.0.mlp.hook_post"].shape == (b, t, cfg.d_mlp)
    assert cache["ln_final.hook_scale"].shape == (b, t, 1)
    # hook_embed holds the spliced image embeddings at the image positions
    image = inp.groups["image"]
    assert torch.equal(cache["hook_embed"][image], cache["hook_image_embeds"][image])
    # the unembedding of the final residual stream gives the logits
    final = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    assert torch.allclose(model.unembed(model.ln_final(final)), logits, atol=1e-5)


def test_hooks_editing_in_place_take_effect(model, inp):
    """Norms (and Qwen3-VL's DeepStack sum) round as HF does only where no hook changed
    ``hook_scale`` (``hook_mlp_out``): an edit in place is a change too."""
    clean = model(inp)

    def double(t, hook):  # in place, returning nothing
        t.mul_(2)

    for name in ("blocks.1.ln2.hook_scale", "blocks.0.hook_mlp_out"):
        new = model.run_with_hooks(inp, fwd_hooks=[(name, lambda t, hook: t * 2)])
        same = model.run_with_hooks(inp, fwd_hooks=[(name, lambda t, hook: t.mul_(2))])
        silent = model.run_with_hooks(inp, fwd_hooks=[(name, double)])
        assert torch.equal(new, same) and torch.equal(new, silent)
        assert (new - clean).abs().max() > 1e-3


def test_names_filter_and_remove_batch_dim(model, inp):
    one = inp.select(1)
    _, cache = model.run_with_cache(
        one, names_filter=lambda n: n.endswith("hook_z"), remove_batch_dim=True
    )
    assert set(cache.keys()) == {f"blocks.{i}.attn.hook_z" for i in range(model.cfg.n_layers)}
    assert cache["blocks.0.attn.hook_z"].ndim == 3
    _, single = model.run_with_cache(one, remove_batch_dim=True)
    _, batched = model.run_with_cache(one)
    assert not single.has_batch_dim and batched.has_batch_dim  # TL's stacks read this flag
    torch.testing.assert_close(single.decompose_resid(), batched.decompose_resid()[:, 0])
    with pytest.raises(ValueError, match="batch of one"):
        model.run_with_cache(inp, remove_batch_dim=True)


def test_decompose_resid_sums_to_resid_post(model, inp):
    _, cache = model.run_with_cache(inp)
    parts = cache.decompose_resid()
    resid = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    real = inp.attention_mask.bool()
    assert (parts.sum(0) - resid)[real].abs().max() < 1e-5
    assert (parts.sum(0) - resid)[inp.groups["image"]].abs().max() < 1e-5


def test_stack_head_results_sum_to_attn_out(model, inp):
    _, cache = model.run_with_cache(inp)
    heads = cache.stack_head_results(layer=model.cfg.n_layers)
    heads = heads.view(model.cfg.n_layers, model.cfg.n_heads, *heads.shape[1:])
    for layer in range(model.cfg.n_layers):
        block = model.blocks[layer]
        attn_out = heads[layer].sum(0) + block.attn.b_O
        if block.sandwich:  # Gemma: the heads' sum passes ln1_post before the residual stream
            attn_out = block.ln1_post(attn_out)
        assert (attn_out - cache[f"blocks.{layer}.hook_attn_out"]).abs().max() < 1e-5


def test_use_attn_result_matches_plain_run(model, inp):
    plain = model(inp)
    model.set_use_attn_result(True)
    try:
        logits, cache = model.run_with_cache(inp)
    finally:
        model.set_use_attn_result(False)
    assert cache["blocks.0.attn.hook_result"].shape[-2:] == (model.cfg.n_heads, model.cfg.d_model)
    assert (logits - plain).abs().max() < 1e-5


def test_logit_attrs_sum_to_answer_logit(model, inp):
    logits, cache = model.run_with_cache(inp)
    stack = cache.accumulated_resid(layer=-1, incl_mid=False, pos_slice=-1)[-1:]
    attrs = cache.logit_attrs(stack, tokens=inp.answer_ids, pos_slice=-1)
    expected = logits[torch.arange(len(inp)), -1, inp.answer_ids]
    assert torch.allclose(attrs[0], expected, atol=1e-4)


def test_act_patching_with_a_corrupted_image(model):
    prompt = PROMPTS[0]
    clean = model.prepare(noise_image(20, 28, 1), prompt, answers="star")
    corrupt = model.prepare(noise_image(20, 28, 7), prompt, answers="star")
    answer = int(clean.answer_ids[0])

    def metric(logits):
        return logits[0, -1, answer]

    clean_logits, clean_cache = model.run_with_cache(clean)
    clean_metric, corrupt_metric = metric(clean_logits), metric(model(corrupt))
    assert abs(clean_metric - corrupt_metric) > 1e-3  # the image matters

    sweep = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
    assert sweep.shape == (model.cfg.n_layers, corrupt.shape[1])
    # positions before the image are identical in both runs: patching them changes nothing
    first_image = int(corrupt.positions("image")[0])
    assert torch.allclose(
        sweep[:, :first_image], corrupt_metric.expand(model.cfg.n_layers, first_image), atol=1e-5
    )
    # an entry equals the same patch done by hand
    layer, pos = 1, int(corrupt.positions("image")[3])

    def patch_one(resid, hook):
        resid[:, pos] = clean_cache[hook.name][:, pos]
        return resid

    by_hand = metric(
        model.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.hook_resid_pre", patch_one)])
    )
    assert torch.allclose(sweep[layer, pos], by_hand, atol=1e-5)
    # the token-tensor API sees the image too, inside model.bind(...)
    with model.bind(corrupt):
        swept_tokens = patching.get_act_patch_resid_pre(
            model, corrupt.input_ids, clean_cache, metric
        )
    assert torch.allclose(swept_tokens, sweep)

    # patching every position recovers the clean metric
    def patch_all(resid, hook):
        return clean_cache[hook.name]

    # (Qwen3-VL's image also enters later, through DeepStack: patch that too)
    hooks = [(n, patch_all) for n in clean_cache if n == "blocks.0.hook_resid_pre"
             or n.endswith("hook_deepstack")]
    recovered = metric(model.run_with_hooks(corrupt, fwd_hooks=hooks))
    assert torch.allclose(recovered, clean_metric, atol=1e-5)


def test_tokens_with_image_placeholders_need_an_image(model, inp):
    with pytest.raises(ValueError, match="bind"):
        model(inp.input_ids)


def test_text_only_run_via_string(model):
    text = "USER: the picture shows a small red star . what is the main object ? ASSISTANT:"
    logits = model(text)
    with torch.no_grad():
        ref = model.hf_model(input_ids=model.to_tokens(text)).logits
    assert logits.shape == ref.shape and (logits - ref).abs().max() <= 1e-4


@parity("ActivationCache.get_full_resid_decomposition", "differs",
        "its components sum to the residual stream as TL says; refused in one line where they "
        "could not: across sandwich-norm layers (Gemma 3: the head and neuron sums pass a norm "
        "before the residual add) and, per neuron, across Qwen3-VL's DeepStack layers (image "
        "features join hook_mlp_out)")
def test_full_resid_decomposition_sums_or_is_refused(model, inp):
    """TL's claim is that the components sum to the residual stream; across a sandwich-norm
    layer (Gemma 3) they cannot (each head's write passes a norm after the head sum), nor per
    neuron across a DeepStack layer (Qwen3-VL), so those are refused rather than returned
    not summing."""
    _, cache = model.run_with_cache(inp)
    last = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    if model.blocks[0].sandwich:
        with pytest.raises(ValueError, match="layer 0 normalises .* use decompose_resid"):
            cache.get_full_resid_decomposition(expand_neurons=False)
        with pytest.raises(ValueError, match="layer 0 normalises"):
            cache.get_full_resid_decomposition(0, True)  # layer 0's heads, mlp_input
        assert torch.allclose(cache.decompose_resid(layer=model.cfg.n_layers).sum(0), last,
                              atol=1e-4)  # the exact per-layer split still works
        return
    deepstack = "blocks.0.hook_deepstack" in cache  # Qwen3-VL: image features in mlp_out
    if deepstack:
        with pytest.raises(ValueError, match="layer 0's hook_mlp_out also carries DeepStack"):
            cache.get_full_resid_decomposition()
    for expand in (False,) if deepstack else (False, True):
        parts = cache.get_full_resid_decomposition(expand_neurons=expand)
        assert torch.allclose(parts.sum(0), last, atol=1e-4)
