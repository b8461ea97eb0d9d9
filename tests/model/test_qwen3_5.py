"""Qwen3.5: Gated-DeltaNet linear-attention layers between output-gated full-attention layers.

Logits = HF eager (fp32, its torch fallback of the chunked delta rule) on a left-padded batch
with images of two sizes, per example and text-only (and Qwen3.5-MoE with its shared expert);
the delta rule and the write weights against answers derived by hand; the per-head hooks;
head ablation and knockout of linear-attention heads by their known effect (the answer no
longer depends on the image); the engine (prefix state cached per baseline side) = the
reference; a KV-cache continuation (the recurrent state and conv tail cached) = the full run;
greedy ``generate`` = HF."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from lvlm_lens import HookedLVLM
from lvlm_lens.interventions import (
    AblationEngine,
    HeadAblation,
    ablate_heads,
    compute_baseline,
    knockout,
    run_reference,
)
from lvlm_lens.model.attention import Attention
from lvlm_lens.model.kv_cache import KVCache
from lvlm_lens.model.linear_attention import GatedDeltaNet, delta_rule, write_weights
from tests.helpers import PROMPTS, baseline_for, hf_kwargs, hf_logits, noise_image

IMAGES = [noise_image(20, 28, 1), noise_image(30, 14, 2)]


@pytest.fixture(scope="module")
def pair(tiny_checkpoint):
    folder = tiny_checkpoint("qwen3.5", chat_template=True)
    model = HookedLVLM.from_pretrained(folder)
    reference = type(model.hf_model).from_pretrained(folder, attn_implementation="eager").eval()
    return model, reference


def test_layer_schedule_follows_the_config(pair):
    model, reference = pair
    types = reference.config.text_config.layer_types
    assert set(types) == {"linear_attention", "full_attention"} and len(types) >= 4
    lin = model.cfg.decoder.linear_attention
    assert lin.layers == tuple(i for i, t in enumerate(types) if t == "linear_attention")
    for layer, block in enumerate(model.blocks):
        kind = GatedDeltaNet if layer in lin.layers else Attention
        assert type(block.attn) is kind


@torch.no_grad()
def test_logits_match_hf_on_a_padded_batch_and_per_example(pair):
    model, reference = pair
    inp = model.prepare(IMAGES, PROMPTS)
    assert (inp.attention_mask == 0).any(), "the batch must be padded"
    logits, ref = model(inp), hf_logits(reference, model, inp)
    real = inp.attention_mask.bool()
    assert (logits - ref)[real].abs().max() <= 1e-4
    assert ref[real].std() > 0.1
    for image, prompt in zip(IMAGES, PROMPTS, strict=True):
        one = model.prepare([image], [prompt])
        assert (model(one) - hf_logits(reference, model, one)).abs().max() <= 1e-4


@torch.no_grad()
def test_text_only_logits_match_hf(pair):
    model, reference = pair
    inp = model.prepare([None, None], ["USER: what is this ? ASSISTANT:", "USER: hello ?"])
    real = inp.attention_mask.bool()
    assert (model(inp) - hf_logits(reference, model, inp))[real].abs().max() <= 1e-4


def test_delta_rule_known_answers():
    """With ``beta = 1`` and no decay a write at a unit key replaces what that key recalls:
    reading with the same key gives the value just written; an orthogonal key's memory is
    untouched; ``decay = log(1/2)`` halves the state before the write."""
    e = torch.eye(4)
    k = torch.stack([e[0], e[1], e[0]])[None, :, None]  # [1, 3, 1, 4]
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])[None, :, None]
    ones, zeros = torch.ones(1, 3, 1), torch.zeros(1, 3, 1)
    read, state = delta_rule(k, k, v, ones, zeros)
    assert torch.allclose(read[0, :, 0], v[0, :, 0])
    assert torch.allclose(state[0, 0, 0], v[0, 2, 0]) and torch.allclose(state[0, 0, 1], v[0, 1, 0])
    half = torch.full((1, 3, 1), 0.5).log()
    q = e[2].expand(1, 3, 1, 4)  # reads nothing: no key was written along e2
    read, state = delta_rule(q, k, v, 0.5 * ones, half)
    assert read.abs().max() == 0
    # e0's memory: 0.5 v0 after t=0, halved at t=1 and t=2 to 0.125 v0, then
    # + 0.5 (v2 - 0.125 v0) = 0.0625 v0 + 0.5 v2
    assert torch.allclose(state[0, 0, 0], 0.0625 * v[0, 0, 0] + 0.5 * v[0, 2, 0])


@torch.no_grad()
def test_linear_attention_hooks_per_head(pair):
    model, _ = pair
    inp = model.prepare(IMAGES, PROMPTS)
    lin = model.cfg.decoder.linear_attention
    logits, cache = model.run_with_cache(inp)
    assert torch.equal(logits, model(inp))  # caching changes nothing, bit for bit
    model.set_use_attn_result(True)
    try:
        with_result, cache = model.run_with_cache(inp)
    finally:
        model.set_use_attn_result(False)
    real = inp.attention_mask.bool()
    assert (with_result - logits)[real].abs().max() <= 1e-4  # summed per head: rounding only
    b, p = inp.input_ids.shape
    layer = lin.layers[0]
    a = f"blocks.{layer}.attn."
    shapes = {
        "hook_q": (b, p, lin.n_k_heads, lin.d_k), "hook_k": (b, p, lin.n_k_heads, lin.d_k),
        "hook_v": (b, p, lin.n_v_heads, lin.d_v), "hook_beta": (b, p, lin.n_v_heads),
        "hook_decay": (b, p, lin.n_v_heads), "hook_gate": (b, p, lin.n_v_heads, lin.d_v),
        "hook_read": (b, p, lin.n_v_heads, lin.d_v), "hook_z": (b, p, lin.n_v_heads, lin.d_v),
        "hook_result": (b, p, lin.n_v_heads, model.cfg.d_model),
    }  # fmt: skip
    for name, shape in shapes.items():
        assert tuple(cache[a + name].shape) == shape, name
    assert torch.allclose(cache[a + "hook_k"][real].norm(dim=-1), torch.ones(()), atol=1e-5)
    assert (cache[a + "hook_beta"] > 0).all() and (cache[a + "hook_decay"] <= 0).all()
    out = torch.einsum("bshd,hdm->bsm", cache[a + "hook_z"], model.blocks[layer].attn.W_O)
    assert (out - cache[f"blocks.{layer}.hook_attn_out"]).abs().max() <= 1e-5
    full = next(i for i in range(model.cfg.n_layers) if i not in lin.layers)
    gate = cache[f"blocks.{full}.attn.hook_gate"]
    assert tuple(gate.shape) == (b, p, model.cfg.n_heads, model.cfg.d_head)


@torch.no_grad()
def test_editing_a_heads_value_changes_only_later_reads_of_that_head(pair):
    """The recurrence is causal and per value head: zeroing head 1's value at position ``t``
    leaves every read before ``t`` and every other head's reads as they were."""
    model, _ = pair
    inp = model.prepare(IMAGES[:1], PROMPTS[:1])
    layer, t = model.cfg.decoder.linear_attention.layers[0], 10
    name = f"blocks.{layer}.attn.hook_read"
    _, clean = model.run_with_cache(inp, names_filter=name)

    def zero(v, hook):
        v[:, t, 1] = 0
        return v

    reads = {}
    model.run_with_hooks(inp, fwd_hooks=[(f"blocks.{layer}.attn.hook_v", zero),
                                         (name, lambda x, hook: reads.setdefault("r", x))])
    diff = (reads["r"] - clean[name]).abs()
    assert diff[:, :t].max() == 0 and diff[:, :, [0, 2, 3]].max() == 0
    assert diff[:, t:, 1].max() > 1e-4


def _left_pad(rows, pad_id):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask


@torch.no_grad()
def test_cache_carries_each_linear_layers_state_and_conv_tail(pair):
    """A linear-attention layer's cache entry is its recurrent state and the conv's last
    ``conv_kernel - 1`` inputs (the fused q/k/v projection of the last real tokens, by hand
    from ``ln1``'s output), its K/V empty; a full-attention layer keeps its K/V."""
    model, _ = pair
    inp = model.prepare(IMAGES, PROMPTS)
    lin = model.cfg.decoder.linear_attention
    names = [f"blocks.{i}.ln1.hook_normalized" for i in lin.layers]
    _, acts = model.run_with_cache(inp, names_filter=names)
    cache = model.run_prefix(inp)
    b, p = inp.shape
    tail = lin.conv_kernel - 1
    for layer in range(model.cfg.n_layers):
        st = cache.states[layer]
        if layer not in lin.layers:
            assert st is None and cache.keys[layer].shape[2] == p
            continue
        assert cache.keys[layer].numel() == 0 and cache.keys[layer].shape[2] == p
        assert tuple(st.state.shape) == (b, lin.n_v_heads, lin.d_k, lin.d_v)
        x = acts[f"blocks.{layer}.ln1.hook_normalized"][:, -tail:]
        mixed = model.blocks[layer].attn.in_proj_qkv(x).transpose(1, 2)
        assert torch.allclose(st.conv, mixed, atol=1e-6)
        assert st.state.abs().max() > 0


@torch.no_grad()
def test_cached_continuation_of_a_left_padded_batch_equals_the_full_run(pair):
    """Prefix (image included, left-padded rows) then suffix through an unfrozen cache, one
    token at a time and a chunk at once, = one run of the whole sequence; left padding never
    enters the state or the conv (the padded row = that example alone)."""
    model, _ = pair
    inp = model.prepare(IMAGES, PROMPTS)
    assert (inp.attention_mask == 0).any()
    full = model(inp)
    cut = inp.shape[1] - 3
    cache = model.run_prefix(inp, cut, frozen=False)
    steps = [model(inp.input_ids[:, j : j + 1], past_kv_cache=cache)[:, -1]
             for j in range(cut, cut + 2)]  # fmt: skip
    last = model(inp.input_ids[:, cut + 2 :], past_kv_cache=cache)
    got = torch.cat([torch.stack(steps, 1), last], 1)
    real = inp.attention_mask.bool()[:, cut:]
    assert (got - full[:, cut:])[real].abs().max() <= 1e-4
    for i in range(len(inp)):  # and each row = its example alone
        one = model.prepare([IMAGES[i]], [PROMPTS[i]])
        assert (full[i, -3:] - model(one)[0, -3:]).abs().max() <= 1e-4


@torch.no_grad()
def test_shared_prefix_with_left_padded_suffixes_equals_full_runs(pair):
    """One frozen prefix (after the image) continued by three suffixes of different lengths
    in one left-padded batch: each row = the full run of prefix + suffix, so the suffix's
    padding neither decays the cached state nor separates the conv from the cached tail."""
    model, _ = pair
    prompts = ["USER: <image>\nwhat is the main object ? ASSISTANT:",
               "USER: <image>\nwhat color is it ? ASSISTANT:",
               "USER: <image>\ndescribe the shape in one word please ? ASSISTANT:"]
    inps = [model.prepare([IMAGES[0]], [p]) for p in prompts]
    img = inps[0].groups["image"][0]
    cut = int(img.nonzero().max()) + 1
    cache = model.run_prefix(inps[0], cut)
    suffixes = [i.input_ids[0, cut:] for i in inps]
    assert len({len(s) for s in suffixes}) == 3
    ids, mask = _left_pad(suffixes, model.tokenizer.pad_token_id)
    out = model(ids, past_kv_cache=cache, attention_mask=mask)
    fulls = [model(i)[0, cut:] for i in inps]
    for r, (s, ref) in enumerate(zip(suffixes, fulls, strict=True)):
        assert (out[r, -len(s) :] - ref).abs().max() <= 1e-4, f"row {r}"
    assert (fulls[0][-1] - fulls[1][-1]).abs().max() > 1e-3
    assert cache.states[model.cfg.decoder.linear_attention.layers[0]].state.shape[0] == 1


def test_a_cache_without_the_recurrent_state_is_refused(pair):
    """K/V sliced from a longer run carry no state after the slice: refused in one line."""
    model, _ = pair
    inp = model.prepare(IMAGES[:1], PROMPTS[:1])
    cache = model.run_prefix(inp)
    sliced = KVCache([k[:, :, :5] for k in cache.keys], [v[:, :, :5] for v in cache.values],
                     cache.attention_mask[:, :5])
    with pytest.raises(ValueError, match="holds no recurrent state"):
        model(inp.input_ids[:, -3:], past_kv_cache=sliced)


TEXTS = ["USER: what is this ? ASSISTANT:", "hello ?"]


def _hf_greedy(reference, model, n, **inputs):
    with torch.no_grad():
        return reference.generate(**inputs, max_new_tokens=n, do_sample=False, eos_token_id=None,
                                  pad_token_id=model.tokenizer.pad_token_id)


@pytest.mark.parametrize("which", ["pair", "moe_pair"])
def test_generate_greedy_equals_hf_with_images_and_text(which, request):
    """Dense and MoE, 16 new tokens: a left-padded batch with images of two sizes and a
    left-padded text-only batch = HF ``generate`` token for token, in TL's return types."""
    model, reference = request.getfixturevalue(which)
    inp = model.prepare(IMAGES, PROMPTS)
    theirs = _hf_greedy(reference, model, 16, **hf_kwargs(model, inp))
    assert torch.equal(model.generate(inp, 16, stop_at_eos=False), theirs)
    new = model.generate(inp, 16, stop_at_eos=False, new_tokens_only=True)
    assert torch.equal(new, theirs[:, inp.shape[1] :]) and new.unique().numel() > 8
    text = model.generate(inp, 16, stop_at_eos=False, return_type="str")
    assert text == model.tokenizer.batch_decode(theirs, skip_special_tokens=True)
    ids, mask = model.encode_text(TEXTS, None, padding_side="left")
    assert (mask == 0).any()
    theirs = _hf_greedy(reference, model, 16, input_ids=ids, attention_mask=mask)
    assert torch.equal(model.generate(TEXTS, 16, stop_at_eos=False, return_type="tokens"), theirs)
    out = model.generate(TEXTS, 16, stop_at_eos=False)
    assert out == model.tokenizer.batch_decode(theirs, skip_special_tokens=True)


def test_generate_continues_a_transformer_lens_cache(pair):
    """TL's cache object holds no recurrent state: ours rides along with it, so generating
    in two calls = one call."""
    model, _ = pair
    inp = model.prepare(IMAGES[:1], PROMPTS[:1])
    whole = model.generate(inp, 8, stop_at_eos=False, new_tokens_only=True)
    tl = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    first = model.generate(inp, 4, stop_at_eos=False, new_tokens_only=True, past_kv_cache=tl)
    rest = model.generate(first[:, -1:], 4, stop_at_eos=False, new_tokens_only=True,
                          past_kv_cache=tl)
    assert torch.equal(torch.cat([first, rest], 1), whole)


def _ablated(model, inp, heads, baseline, names=()):

    with torch.no_grad(), ablate_heads(model, inp, heads, baseline) as m:
        return m.run_with_cache(inp, names_filter=list(names)) if names else (m(inp), None)


def test_ablating_every_head_makes_the_answer_independent_of_the_image(pair):
    """Every full-attention head reads the baseline's image K/V and every linear-attention
    head builds its state from the baseline's input at the image positions: two different
    images then give the same logits after the image (scope ``text``)."""

    model, _ = pair
    images = [noise_image(24, 24, 3), noise_image(24, 24, 4)]
    outs, cleans, full_only = [], [], []
    ones = torch.ones(model.cfg.n_layers, model.cfg.n_heads)
    full = ones.clone()
    full[list(model.cfg.decoder.linear_attention.layers)] = 0
    for image in images:
        inp = model.prepare([image], PROMPTS[:1])
        base = compute_baseline(model, inp, HeadAblation())
        outs.append(_ablated(model, inp, ones, base)[0][0, -1])
        full_only.append(_ablated(model, inp, full, base)[0][0, -1])
        with torch.no_grad():
            cleans.append(model(inp)[0, -1])
    assert (cleans[0] - cleans[1]).abs().max() > 0.1  # the image matters when nothing is ablated
    # and still reaches the answer through the linear-attention heads alone
    assert (full_only[0] - full_only[1]).abs().max() > 1e-3
    assert (outs[0] - outs[1]).abs().max() <= 1e-5


def test_ablating_one_linear_head_changes_only_its_reads_after_the_image(pair):
    """Head 1 of the first linear layer: its reads after the image change, its reads up to the
    image's end and every other head's reads in that layer stay clean; an empty mask is the
    clean run."""

    model, _ = pair
    inp = model.prepare(IMAGES[:1], PROMPTS[:1])
    base = compute_baseline(model, inp, HeadAblation())
    layer = model.cfg.decoder.linear_attention.layers[0]
    name = f"blocks.{layer}.attn.hook_read"
    heads = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    _, clean = model.run_with_cache(inp, names_filter=[name])
    logits, none = _ablated(model, inp, heads, base, [name])
    assert torch.equal(none[name], clean[name])
    heads[layer, 1] = 1
    _, cache = _ablated(model, inp, heads, base, [name])
    diff = (cache[name] - clean[name]).abs()[0]
    last = int(inp.groups["image"][0].nonzero().max())
    assert diff[: last + 1].max() == 0 and diff[:, [0, 2, 3]].max() == 0
    assert diff[last + 1 :, 1].max() > 1e-4


@pytest.mark.parametrize("baseline", ["mean", "image", "blank", "zero"])
@pytest.mark.parametrize("scope", ["text", "all"])
@pytest.mark.parametrize("which", ["pair", "moe_pair"])
def test_engine_equals_the_reference(which, baseline, scope, request):
    """The engine (scope ``text``: the prefix's recurrent state and conv tail cached per
    baseline side, only the text after the image run per mask; ``all``: full sequences,
    ablated linear heads reading a second run of the layer on the baseline's input) = the
    reference hooks, for every baseline, both scopes, dense and MoE, on a padded batch; the
    masks matter."""
    model, _ = request.getfixturevalue(which)
    inp = model.prepare(IMAGES, PROMPTS)
    config = HeadAblation(baseline=baseline, scope=scope)
    base = baseline_for(model, inp, config)
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(5, model.cfg.n_layers, model.cfg.n_heads, generator=gen) < 0.5
    masks[0] = False
    engine = AblationEngine(model, inp, base, config, batch_size=2)
    ref = run_reference(model, inp, masks, base, config, progress=False)
    out = engine.run(masks, progress=False)
    assert (out - ref).abs().max() <= 1e-4
    assert (ref[:, 1:] - ref[:, :1]).abs().max() > 1e-4  # the masks matter
    if scope == "text":  # the prefix is cached, with both sides of each linear layer
        st = engine._example(0)
        layer = model.cfg.decoder.linear_attention.layers[0]
        assert st.cache is not None and st.x.shape[1] < inp.select(0).shape[1]
        clean, alt = st.cache.states[layer], st.cache.alt_states[layer]
        assert (clean.state - alt.state).abs().max() > 1e-4


@torch.no_grad()
def test_engine_ablating_only_linear_heads_moves_only_their_reads(pair):
    """A mask of linear-attention heads alone, through the engine's cached prefix: = the
    reference, and differs from the clean run (the alternative state is what they read)."""
    model, _ = pair
    inp = model.prepare(IMAGES[:1], PROMPTS[:1])
    config = HeadAblation()
    base = compute_baseline(model, inp, config)
    masks = torch.zeros(2, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    layer = model.cfg.decoder.linear_attention.layers[-1]
    masks[1, layer, 2] = True
    out = AblationEngine(model, inp, base, config).run(masks, progress=False)
    ref = run_reference(model, inp, masks, base, config, progress=False)
    assert (out - ref).abs().max() <= 1e-5 and (out[0, 1] - out[0, 0]).abs() > 1e-5


def test_run_reference_is_the_path_and_an_empty_mask_is_clean(pair):

    model, _ = pair
    inp = model.prepare(IMAGES, PROMPTS)
    config = HeadAblation()
    base = compute_baseline(model, inp, config)
    masks = torch.zeros(2, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    masks[1] = True
    out = run_reference(model, inp, masks, base, config, progress=False)
    with torch.no_grad():
        logits = model(inp)[:, -1]
    answers = logits.argmax(-1)
    assert torch.allclose(out[:, 0], logits.gather(-1, answers[:, None])[:, 0])
    assert (out[:, 1] - out[:, 0]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def moe_pair(tiny_checkpoint):
    folder = tiny_checkpoint("qwen3.5-moe", chat_template=True)
    model = HookedLVLM.from_pretrained(folder)
    reference = type(model.hf_model).from_pretrained(folder, attn_implementation="eager").eval()
    return model, reference


@torch.no_grad()
def test_moe_logits_match_hf_per_example_and_a_padded_batch_its_examples(moe_pair):
    """Per example = HF eager within HF's own rounding; in the padded batch each row = that
    example alone <= 1e-4. The tiny MoE amplifies the delta rule's rounding: on the 67-token
    example HF's chunked and step-wise kernels differ from each other by 2.7e-4 and HF's padded
    batch from its single example by ~5e-4 (padding moves its 64-token chunks), ours from HF's
    chunked one by 2.2e-4 (fp64 recurrence), hence 5e-4 here; the dense kind meets 1e-4."""
    model, reference = moe_pair
    assert model.cfg.decoder.moe.layers == tuple(range(model.cfg.n_layers))
    assert model.cfg.decoder.linear_attention.layers
    inp = model.prepare(IMAGES, PROMPTS)
    assert (inp.attention_mask == 0).any(), "the batch must be padded"
    batch = model(inp)
    for i, (image, prompt) in enumerate(zip(IMAGES, PROMPTS, strict=True)):
        one = model.prepare([image], [prompt])
        alone, ref = model(one), hf_logits(reference, model, one)
        assert (alone - ref).abs().max() <= 5e-4
        assert ref.std() > 0.1
        assert (batch[i, -one.input_ids.shape[1] :] - alone[0]).abs().max() <= 1e-4


@torch.no_grad()
def test_moe_shared_expert_hooks_by_hand(moe_pair):
    """``hook_shared_out`` = ``sigmoid(hook_shared_gate)`` times the shared MLP from its weights,
    and the MLP output = the routed experts' outputs plus it."""
    model, _ = moe_pair
    inp = model.prepare(IMAGES[:1], PROMPTS[:1])
    _, cache = model.run_with_cache(inp)
    for layer, block in enumerate(model.blocks):
        m = f"blocks.{layer}.mlp."
        x = cache[f"blocks.{layer}.ln2.hook_normalized"]
        sh = block.mlp.shared_expert
        w_gate, w_up, w_down = sh.gate_proj.weight, sh.up_proj.weight, sh.down_proj.weight
        h = torch.nn.functional.silu(x @ w_gate.T) * (x @ w_up.T)
        gate = x @ block.mlp.shared_expert_gate.weight.T
        assert torch.allclose(cache[m + "hook_shared_gate"], gate, atol=1e-5)
        assert torch.allclose(cache[m + "hook_shared_out"], torch.sigmoid(gate) * (h @ w_down.T),
                              atol=1e-5)
        total = cache[m + "hook_expert_out"].sum(2) + cache[m + "hook_shared_out"]
        assert torch.allclose(total, cache[f"blocks.{layer}.hook_mlp_out"], atol=1e-5)


def _after_image(inp):
    img = inp.groups["image"]
    cols = torch.arange(img.shape[1])
    return inp.attention_mask.bool() & (cols > (img * cols).max(-1, keepdim=True).values)


@torch.no_grad()
def test_knockout_image_to_text_in_every_layer_makes_the_answer_independent_of_the_image(pair):
    """Full-attention layers: the text after the image may not attend to it; linear-attention
    layers: that text reads a state the image tokens contributed nothing to. Two images then
    give the same logits after the image; knocking out only the full-attention layers does
    not suffice; the text before the image and the image itself are untouched."""

    model, _ = pair
    linear = model.cfg.decoder.linear_attention.layers
    full = [i for i in range(model.cfg.n_layers) if i not in linear]
    outs, partial = [], []
    for image in (noise_image(24, 24, 3), noise_image(24, 24, 4)):
        inp = model.prepare([image], PROMPTS[:1])
        target = _after_image(inp)
        with knockout(model, inp, "image", target, range(model.cfg.n_layers)):
            logits = model(inp)
        clean = model(inp)
        # (the hooked scores take the materialised softmax: rounding only)
        assert (logits[~target] - clean[~target]).abs().max() <= 1e-5
        outs.append(logits[0, -1])
        with knockout(model, inp, "image", target, full):
            partial.append(model(inp)[0, -1])
    assert (partial[0] - partial[1]).abs().max() > 1e-3
    assert (outs[0] - outs[1]).abs().max() <= 1e-5


def test_write_weights_rebuild_the_read_from_each_tokens_write():
    """``read_t = sum_j a[t, j] delta_j``, with each token's write ``delta_j`` computed here
    step by step from the definition."""
    gen = torch.Generator().manual_seed(0)
    s, d_k, d_v = 7, 4, 3
    q = torch.nn.functional.normalize(torch.randn(s, d_k, generator=gen), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(s, d_k, generator=gen), dim=-1)
    v = torch.randn(s, d_v, generator=gen)
    beta, decay = torch.rand(s, generator=gen), -torch.rand(s, generator=gen)
    state, deltas = torch.zeros(d_k, d_v), []
    for t in range(s):
        state = state * decay[t].exp()
        deltas.append(beta[t] * (v[t] - k[t] @ state))
        state = state + torch.outer(k[t], deltas[-1])
    read, _ = delta_rule((q * d_k**-0.5)[None, :, None], k[None, :, None], v[None, :, None],
                         beta[None, :, None], decay[None, :, None])
    rebuilt = write_weights(q, k, decay) @ torch.stack(deltas)
    assert torch.allclose(rebuilt, read[0, :, 0], atol=1e-5)


def test_a_decoder_of_linear_layers_only_is_refused_in_one_line(tiny_checkpoint):
    """Before: ``StopIteration`` from deep in the config reader."""
    folder = tiny_checkpoint("qwen3.5", num_hidden_layers=2,
                             layer_types=["linear_attention", "linear_attention"])
    with pytest.raises(ValueError, match="keep at least one full_attention layer") as err:
        HookedLVLM.from_pretrained(folder)
    assert "\n" not in str(err.value)
