"""Gemma 4 (image side): the tokens of a left-padded batch = HF ``Gemma4Processor``'s, logits
= HF eager, each decoder feature that is new in Gemma 4 (per-layer inputs, v norm, layer
scalar, wider global heads, image blocks on the sliding layers only) checked by hand and shown
to matter, and audio refused.

``Gemma4Processor`` wants a torchvision video processor and an audio feature extractor, so the
reference is HF's own class built without its ``__init__``: the attributes its image expansion
and token types read, on the model's tokenizer and PIL image processor."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers.models.gemma4 import Gemma4Processor

from lvlm_lens import HookedLVLM
from lvlm_lens.interventions.ablation import HeadAblation, head_ablation_hooks
from lvlm_lens.interventions.engine import AblationEngine, run_reference
from lvlm_lens.model.families import language_model
from tests.helpers import PROMPTS, baseline_for, check_engine_equals_reference, noise_image

#: (height, width): 20x28 px is resized to 42x54 (7x9 tokens), 30x18 px to 60x36 (10x6).
IMAGES = [noise_image(20, 28, 1), noise_image(30, 18, 2)]
GRIDS = [(7, 9), (10, 6)]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("gemma4", chat_template=True))


@pytest.fixture(scope="module")
def inp(model):
    out = model.prepare(IMAGES, PROMPTS)
    assert (out.attention_mask == 0).any()  # left-padded
    return out


def hf_processor(model) -> Gemma4Processor:
    """HF's ``Gemma4Processor`` without its video processor and audio feature extractor."""
    tok = model.tokenizer
    proc = object.__new__(Gemma4Processor)
    proc.image_processor, proc.tokenizer = model.image_processor, tok
    proc.image_token, proc.boi_token, proc.eoi_token = tok.image_token, tok.boi_token, tok.eoi_token
    proc.image_token_id = tok.image_token_id
    proc.video_token, proc.audio_token = None, None
    return proc


def rebuilt(model, **spec) -> HookedLVLM:
    """The same weights under a decoder spec with ``spec`` changed."""
    cfg = replace(model.cfg, decoder=replace(model.cfg.decoder, **spec))
    return HookedLVLM(cfg, model.hf_model, model.tokenizer, model.image_processor)


def hf(model, inp) -> torch.Tensor:
    with torch.no_grad():
        return model.hf_model(**inp.to_hf()).logits


def test_tokens_and_pixels_are_hfs_processor(model, inp):
    chat = model.prepare(IMAGES, ["what is this ?", "what is the main object ?"], template="chat")
    assert chat.texts[0] == "<s><|turn>user\n<|image|>what is this ?<turn|>\n<|turn>model\n"
    proc = hf_processor(model)
    for batch in (inp, chat):
        processed, replacements = proc._process_images(IMAGES)
        texts, _ = proc.get_text_with_replacements(list(batch.texts),
                                                   images_replacements=replacements)
        model.tokenizer.padding_side = "left"
        special = not batch.texts[0].startswith("<s>")
        enc = model.tokenizer(texts, padding=True, return_tensors="pt",
                              add_special_tokens=special)  # fmt: skip
        assert torch.equal(enc.input_ids, batch.input_ids)
        assert torch.equal(enc.attention_mask, batch.attention_mask)
        assert torch.equal(torch.as_tensor(processed["pixel_values"]), batch.pixel_values)
        positions = torch.as_tensor(processed["image_position_ids"])
        assert torch.equal(positions, batch.image_extra["image_position_ids"])
        types = torch.tensor(proc.create_mm_token_type_ids(enc.input_ids.tolist()))
        assert torch.equal(types, batch.to_hf()["mm_token_type_ids"])
    assert inp.groups["image"].sum(-1).tolist() == [r * c for r, c in GRIDS]
    assert [tuple(c.amax(0)[1:] + 1) for c in inp.image_coords] == GRIDS


def test_logits_match_hf_on_a_padded_batch_of_two_sizes(model, inp):
    real = inp.attention_mask.bool()
    with torch.no_grad():
        assert (model(inp) - hf(model, inp))[real].abs().max() <= 1e-4


def test_spec_is_read_off_the_checkpoint(model):
    spec = model.cfg.decoder
    assert spec.head_dims == (16, 32, 16, 16, 32) and spec.kv_heads == ()
    assert [b.attn.d_head for b in model.blocks] == list(spec.head_dims)
    assert spec.per_layer_input == 8 and spec.layer_scalar and spec.v_norm
    assert spec.bidirectional_image and spec.bidirectional_sliding_only
    assert spec.logit_softcap == 30.0 and spec.norm_offset == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        model.W_Q  # noqa: B018  (wider global heads: not stacked)
    assert model.blocks[1].attn.W_Q.shape == (4, 64, 32)


@pytest.mark.parametrize("feature", [
    dict(per_layer_input=0), dict(v_norm=False), dict(layer_scalar=False),
    dict(bidirectional_sliding_only=False), dict(bidirectional_image=False),
    dict(logit_softcap=None),
])  # fmt: skip
def test_each_feature_changes_the_logits_when_turned_off(model, inp, feature):
    real = inp.attention_mask.bool()
    with torch.no_grad():
        diff = (rebuilt(model, **feature)(inp) - model(inp))[real].abs().max()
    assert diff > 1e-3


def test_per_layer_inputs_and_layer_scalar_by_hand(model, inp):
    """The per-layer vectors are HF's ``project_per_layer_inputs`` of its own
    ``get_per_layer_inputs`` (image tokens read as padding); each block's output is its scalar
    times ``resid_mid + mlp + per-layer write``; ``decompose_resid`` still sums."""
    _, cache = model.run_with_cache(inp)
    lm = language_model(model.hf_model)
    ids = inp.input_ids.masked_fill(inp.groups["image"], model.cfg.pad_token_id)
    with torch.no_grad():
        want = lm.project_per_layer_inputs(cache["hook_embed"], lm.get_per_layer_inputs(ids))
    got = cache["per_layer_inputs.hook_per_layer_inputs"]
    assert got.shape == (*inp.shape, 5, 8) and (got - want).abs().max() <= 1e-6
    for layer in range(5):
        mid = cache[f"blocks.{layer}.hook_resid_mid"]
        h = mid + cache[f"blocks.{layer}.ln2_post.hook_normalized"]
        h = h + cache[f"blocks.{layer}.hook_per_layer"]
        scalar = model.hf_model.model.language_model.layers[layer].layer_scalar
        assert abs(float(scalar) - 1) > 0.01
        post = cache[f"blocks.{layer}.hook_resid_post"]
        assert (post - h * scalar).abs().max() <= 1e-5
        total = cache[f"blocks.{layer}.hook_mlp_out"]
        assert (mid + total - post).abs().max() <= 1e-5
    parts = cache.decompose_resid()
    assert (parts.sum(0) - cache["blocks.4.hook_resid_post"]).abs().max() <= 1e-4


def test_image_tokens_attend_both_ways_on_sliding_layers_only(model, inp):
    _, cache = model.run_with_cache(inp, names_filter=lambda n: n.endswith("hook_pattern"))
    pos = inp.groups["image"][0].nonzero()[:, 0]
    first, later = int(pos[0]), int(pos[1])  # the image's first token, and the next
    for layer, kind in enumerate(model.cfg.layer_types):
        ahead = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, first, later]
        if kind == "sliding_attention":
            assert ahead.min() > 0
        else:
            assert ahead.abs().max() == 0


def test_generate_matches_hf_greedy(model, inp):
    ours = model.generate(inp, max_new_tokens=4, do_sample=False, return_type="tokens",
                          new_tokens_only=True, verbose=False)  # fmt: skip
    with torch.no_grad():
        theirs = model.hf_model.generate(**inp.to_hf(generate=True), max_new_tokens=4,
                                         do_sample=False, min_new_tokens=4)  # fmt: skip
    assert torch.equal(ours, theirs[:, inp.shape[1]:])


@pytest.mark.parametrize("marker", ["<|audio|>", "<|audio>"])
def test_audio_is_refused_in_one_line(model, marker):
    with pytest.raises(ValueError, match="audio input is not supported") as err:
        model.prepare(IMAGES[:1], f"USER: <image> {marker} what is this ? ASSISTANT:")
    assert "\n" not in str(err.value)


def test_video_is_refused(model):
    with pytest.raises(ValueError, match="video input is not supported"):
        model.prepare(IMAGES[:1], "USER: <image> <|video|> what is this ? ASSISTANT:")


def test_non_causal_and_unsupported_variants_are_refused(tiny_checkpoint):
    folder = tiny_checkpoint("gemma4", use_bidirectional_attention="all")
    with pytest.raises(ValueError, match="use_bidirectional_attention='all' is not supported"):
        HookedLVLM.from_pretrained(folder)


# K/V shared across layers, keys as values ----------------------------------------------------
def test_sharing_layers_read_their_sources_keys_and_values(model, inp):
    """Layers 3 (sliding) and 4 (global) attend with the keys and values of the last earlier
    layer of their type, 2 and 1 (HF's ``kv_sharing_modes``), and have no K/V weights."""
    spec = model.cfg.decoder
    assert spec.kv_sources == (0, 1, 2, 2, 1)
    _, cache = model.run_with_cache(inp)
    for layer, source in ((3, 2), (4, 1)):
        for hook in ("rot_k", "v"):
            ours = cache[f"blocks.{layer}.attn.hook_{hook}"]
            assert torch.equal(ours, cache[f"blocks.{source}.attn.hook_{hook}"])
        assert model.blocks[layer].attn.k_proj is None
        with pytest.raises(ValueError, match=f"keys and values of layer {source}"):
            model.blocks[layer].attn.W_K  # noqa: B018
    assert not hasattr(language_model(model.hf_model).layers[3].self_attn, "k_proj")


def test_an_edit_of_the_sources_keys_reaches_the_sharing_layer_as_in_hf(model, inp):
    """Zeroing K/V head 0 of layer 2's keys (after its k norm) in HF and in ours (its
    ``hook_rot_k``: RoPE of zero is zero) gives the same logits: layer 3 reads the edited keys;
    an edit of layer 3's own ``hook_rot_k`` leaves layer 2 as it was."""
    def zero_head(t):
        t = t.clone()
        t[:, :, 0] = 0
        return t

    hf_norm = language_model(model.hf_model).layers[2].self_attn.k_norm
    handle = hf_norm.register_forward_hook(lambda mod, args, out: zero_head(out))
    try:
        theirs = hf(model, inp)
    finally:
        handle.remove()
    hooks = [("blocks.2.attn.hook_rot_k", lambda t, hook: zero_head(t))]
    with torch.no_grad():
        ours = model.run_with_hooks(inp, fwd_hooks=hooks)
        clean = model(inp)
    real = inp.attention_mask.bool()
    assert (ours - theirs)[real].abs().max() <= 1e-4
    assert (ours - clean)[real].abs().max() > 1e-3
    _, cache = model.run_with_cache(inp, names_filter=lambda n: "hook_rot_k" in n)
    edit = [("blocks.3.attn.hook_rot_k", lambda t, hook: zero_head(t))]
    with model.hooks(fwd_hooks=edit):
        _, edited = model.run_with_cache(inp, names_filter=lambda n: "hook_rot_k" in n)
    assert torch.equal(edited["blocks.2.attn.hook_rot_k"], cache["blocks.2.attn.hook_rot_k"])
    assert edited["blocks.3.attn.hook_rot_k"][:, :, 0].abs().max() == 0


@pytest.mark.parametrize("layer", [2, 3])
def test_engine_equals_reference_ablating_a_source_or_a_sharing_layer(model, inp, layer):
    """Heads ablated only in the source layer 2, or only in the sharing layer 3: the fast
    engine (prefix cache, switched K/V) equals the hooked reference. Ablating at the source
    swaps what its own queries read, not the K/V layer 3 shares: layer 3's keys stay clean."""
    cfg = HeadAblation(baseline="mean", scope="text")
    base = baseline_for(model, inp, cfg)
    masks = torch.zeros(6, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    for j in range(6):
        masks[j, layer, j % 4] = True
        masks[j, layer, (j + 1) % 4] = j >= 4
    fast = AblationEngine(model, inp, base, cfg, metric="logit_diff", batch_size=4).run(masks)
    ref = run_reference(model, inp, masks, base, cfg, metric="logit_diff")
    assert (fast - ref).abs().max() <= 1e-4 and ref.std() > 1e-4
    hooks = head_ablation_hooks(model, inp, masks[0], base, cfg.scope)
    names = lambda n: n == "blocks.3.attn.hook_rot_k"  # noqa: E731
    _, clean = model.run_with_cache(inp, names_filter=names)
    with model.hooks(fwd_hooks=hooks):
        _, ablated = model.run_with_cache(inp, names_filter=names)
    # the shared keys come from layer 2's input: no head ablation at layer 2 or 3 edits them
    assert torch.equal(clean["blocks.3.attn.hook_rot_k"], ablated["blocks.3.attn.hook_rot_k"])


def test_keys_as_values_on_the_global_layers(tiny_checkpoint):
    """``attention_k_eq_v`` (with one K/V head on the global layers): logits = HF, the global
    layers' values are their keys as projected, then v-normed; the engine equals the
    reference."""
    folder = tiny_checkpoint("gemma4", attention_k_eq_v=True, num_global_key_value_heads=1)
    model = HookedLVLM.from_pretrained(folder)
    spec = model.cfg.decoder
    assert spec.kv_heads == (2, 1, 2, 2, 1) and 1 in spec.values_from_keys
    inp = model.prepare(IMAGES, PROMPTS)
    real = inp.attention_mask.bool()
    with torch.no_grad():
        assert (model(inp) - hf(model, inp))[real].abs().max() <= 1e-4
    attn = model.blocks[1].attn
    assert attn.v_proj is None and torch.equal(attn.W_V, attn.W_K)
    _, cache = model.run_with_cache(inp, names_filter=lambda n: n.startswith("blocks.1.attn"))
    k = cache["blocks.1.attn.hook_k"]
    v = k.float() * torch.rsqrt(k.float().pow(2).mean(-1, keepdim=True) + model.cfg.eps)
    assert (cache["blocks.1.attn.hook_v"] - v).abs().max() <= 1e-6
    check_engine_equals_reference(model, inp, "mean", "text", n_masks=16, batch_size=8, rate=0.3)


# experts beside the dense MLP ----------------------------------------------------------------
MOE = dict(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32)


@pytest.fixture(scope="module")
def moe_model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("gemma4", **MOE))


def test_moe_logits_match_hf_and_its_features_matter(moe_model):
    inp = moe_model.prepare(IMAGES, PROMPTS)
    real = inp.attention_mask.bool()
    moe = moe_model.cfg.decoder.moe
    assert moe.beside_dense and moe.layers == tuple(range(5)) and moe.top_k == 2
    with torch.no_grad():
        logits = moe_model(inp)
        assert (logits - hf(moe_model, inp))[real].abs().max() <= 1e-4
        for off in (dict(per_expert_scale=False), dict(router_norm=False)):
            other = rebuilt(moe_model, moe=replace(moe, **off))(inp)
            assert (other - logits)[real].abs().max() > 1e-3


def test_moe_router_and_mlp_out_by_hand(moe_model):
    """The router reads ``resid_mid``: weightless RMS norm, times its scale and ``d ** -0.5``;
    the chosen experts' weights are the renormalised top-2 probabilities times their
    per-expert scales; the MLP's write (``ln2_post``'s output, which ``hook_mlp_out`` then adds
    the per-layer input's write and the layer scalar's change to) is ``ln2_post(
    ln2_dense_post(dense) + ln2_moe_post(sum of the experts' outputs))``."""
    inp = moe_model.prepare(IMAGES[:1], PROMPTS[1])
    _, cache = moe_model.run_with_cache(inp)
    block = moe_model.blocks[1]
    router = language_model(moe_model.hf_model).layers[1].router
    mid = cache["blocks.1.hook_resid_mid"]
    x = mid * torch.rsqrt(mid.pow(2).mean(-1, keepdim=True) + 1e-6) * router.scale / 8.0
    logits = cache["blocks.1.moe.hook_router_logits"]
    assert (logits - x @ block.moe.W_router).abs().max() <= 1e-5
    probs = logits.softmax(-1)
    top = probs.topk(2, dim=-1)
    assert torch.equal(cache["blocks.1.moe.hook_expert_indices"], top.indices)
    with torch.no_grad():
        w = top.values / top.values.sum(-1, keepdim=True) * router.per_expert_scale[top.indices]
        _, wo = block.moe.route(mid)
    assert (wo - w).abs().max() <= 1e-6
    experts = cache["blocks.1.moe.hook_expert_out"].sum(2)
    with torch.no_grad():
        dense = block.ln2_dense_post(block.mlp(cache["blocks.1.ln2.hook_normalized"]))
        want = block.ln2_post(dense + block.ln2_moe_post(experts))
    assert (cache["blocks.1.ln2_post.hook_normalized"] - want).abs().max() <= 1e-5
    parts = cache.decompose_resid()
    assert (parts.sum(0) - cache["blocks.4.hook_resid_post"]).abs().max() <= 1e-4


def test_runs_that_lack_what_gemma4_needs_are_refused_in_one_line(model, inp):
    """From embeddings alone the per-layer inputs (from token ids) are missing; past a K/V
    source layer, ``start_at_layer`` has no keys for the layers sharing them. A start at or
    before the sources gives the full run's logits."""
    embeds = model.embed_input(inp)
    with pytest.raises(ValueError, match="per-layer inputs") as err:
        model.generate(embeds, max_new_tokens=1, verbose=False)
    assert "\n" not in str(err.value)
    resid = model(inp, stop_at_layer=3)
    with pytest.raises(ValueError, match="start_at_layer=3 skips layer 2"):
        model(resid, start_at_layer=3, tokens=inp)
    resid = model(inp, stop_at_layer=1)
    with torch.no_grad():
        full, rest = model(inp), model(resid, start_at_layer=1, tokens=inp)
    assert (full - rest).abs().max() <= 1e-5
