"""Attention knockout against Hugging Face runs with an equivalent 4D attention mask."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.interventions.knockout import (
    knockout,
    knockout_effect,
    knockout_hooks,
    window_layers,
)
from lvlm_lens.model.masks import causal_mask
from tests.helpers import PROMPTS, hf_kwargs, noise_image, position_ids


def load(tiny_checkpoint, kind):
    model = HookedLVLM.from_pretrained(tiny_checkpoint(kind))
    inp = model.prepare(
        [noise_image(20, 28, 1), noise_image(30, 14, 2)], PROMPTS, answers=["star", "circle"]
    )
    return model, inp


@pytest.fixture(scope="module")
def pair(tiny_checkpoint):
    return load(tiny_checkpoint, "llava-onevision-qwen2")


def knocked_mask(inp, source, target):
    """Float [batch, 1, q, k] mask: causal + left padding + the knocked-out edges blocked."""
    mask = causal_mask(inp.attention_mask, inp.shape[1], torch.float32)
    blocked = (target[:, :, None] & source[:, None, :])[:, None]
    # masked_fill, not +=: finfo.min + finfo.min overflows to -inf (NaN rows at padding)
    return mask.masked_fill(blocked, torch.finfo(torch.float32).min)


@torch.no_grad()
def hf_run(model, inp, masks_by_layer):
    """HF logits with a 4D float mask per decoder layer (forward pre-hooks swap the mask)."""
    kw = hf_kwargs(model, inp)
    kw["attention_mask"] = causal_mask(inp.attention_mask, inp.shape[1], torch.float32)
    handles = []
    for layer, mask in masks_by_layer.items():

        def swap(module, args, kwargs, mask=mask):
            return args, {**kwargs, "attention_mask": mask}

        decoder = model.hf_model.model.language_model.layers[layer]
        handles.append(decoder.register_forward_pre_hook(swap, with_kwargs=True))
    try:
        return model.hf_model(**kw, position_ids=position_ids(inp.attention_mask)).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kind", ["llava-llama", "llava-onevision-qwen2"])
def test_knockout_all_layers_matches_hf_4d_mask(tiny_checkpoint, kind):
    model, inp = load(tiny_checkpoint, kind)
    source = inp.groups["image"]
    target = inp.groups["question"] | inp.groups["final"]
    layers = range(model.cfg.n_layers)
    with torch.no_grad():
        ours = model.run_with_hooks(
            inp, fwd_hooks=knockout_hooks(model, inp, "image", target, layers)
        )
        kw = hf_kwargs(model, inp)
        kw["attention_mask"] = knocked_mask(inp, source, target)  # HF uses a 4D mask as-is
        ref = model.hf_model(**kw, position_ids=position_ids(inp.attention_mask)).logits
        clean = model(inp)
    real = inp.attention_mask.bool()
    assert (ours - ref)[real].abs().max() <= 1e-4
    assert (ours - clean)[real].abs().max() > 1e-2  # not vacuous


def test_knockout_in_one_layer_matches_hf_per_layer_mask(pair):
    model, inp = pair
    source, target = inp.groups["image"], inp.groups["final"]
    with knockout(model, inp, "image", "final", layers=[1]):
        ours = model(inp)
    ref = hf_run(model, inp, {1: knocked_mask(inp, source, target)})
    real = inp.attention_mask.bool()
    assert (ours - ref)[real].abs().max() <= 1e-4
    assert (ours - model(inp))[:, -1].abs().max() > 1e-3
    # outside the context manager the model is clean again
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())


def test_image_to_all_text_in_every_layer_makes_the_answer_blind(pair):
    """With every edge from the image to later text cut in every layer, the answer no longer
    depends on the image: the knocked-out runs on two different images agree."""
    model, inp = pair
    other = model.prepare([noise_image(20, 28, 11), noise_image(30, 14, 12)], PROMPTS,
                          answers=["star", "circle"])  # fmt: skip
    assert torch.equal(other.input_ids, inp.input_ids)
    after = ~(inp.groups["image"] | inp.groups["bos"]) & inp.attention_mask.bool()
    every = range(model.cfg.n_layers)
    runs = [model.run_with_hooks(x, fwd_hooks=knockout_hooks(model, x, "image", after, every))
            for x in (inp, other)]  # fmt: skip
    assert (runs[0][:, -1] - runs[1][:, -1]).abs().max() <= 1e-4
    assert (model(inp)[:, -1] - model(other)[:, -1]).abs().max() > 1e-3  # the image mattered


def test_knockout_effect_values_by_hand(pair):
    model, inp = pair
    rows, answers, layers = torch.arange(len(inp)), inp.answer_ids, [0, 1]
    with torch.no_grad():
        clean = model(inp)[:, -1]
        knocked = model.run_with_hooks(
            inp, fwd_hooks=knockout_hooks(model, inp, "image", "final", layers)
        )[:, -1]
    p_clean, p_new = (x.softmax(-1)[rows, answers] for x in (clean, knocked))
    effect = knockout_effect(model, inp, "image", "final", layers)
    assert torch.allclose(effect, (p_new - p_clean) / p_clean, atol=1e-5)
    assert (effect.abs() > 1e-3).all()
    diff = knockout_effect(model, inp, "image", "final", layers, metric="logit")
    assert torch.allclose(diff, knocked[rows, answers] - clean[rows, answers], atol=1e-5)
    rel = knockout_effect(model, inp, "image", "final", layers, metric="logit", relative=True)
    want = (knocked[rows, answers] - clean[rows, answers]) / clean[rows, answers]
    assert torch.allclose(rel, want, atol=1e-5)
    absolute = knockout_effect(model, inp, "image", "final", layers, relative=False)
    assert torch.allclose(absolute, p_new - p_clean, atol=1e-6)
    # one layer given as an int, a subset of heads
    with torch.no_grad():
        some = model.run_with_hooks(
            inp, fwd_hooks=knockout_hooks(model, inp, "image", "final", [1], heads=[0, 2])
        )[:, -1]
    p_some = some.softmax(-1)[rows, answers]
    effect = knockout_effect(model, inp, "image", "final", 1, heads=[0, 2])
    assert torch.allclose(effect, (p_some - p_clean) / p_clean, atol=1e-5)
    assert (p_some - p_new).abs().max() > 1e-5  # fewer heads, another effect


def test_empty_knockout_changes_nothing(pair):
    model, inp = pair
    clean = model(inp)
    nothing = torch.zeros(inp.shape, dtype=torch.bool)
    hooks = knockout_hooks(model, inp, nothing, "final", range(model.cfg.n_layers))
    # hooked runs materialise the scores, plain runs use fused kernels: equal to rounding
    assert (model.run_with_hooks(inp, fwd_hooks=hooks) - clean).abs().max() <= 1e-5
    assert knockout_hooks(model, inp, "image", "final", []) == []
    # text tokens cannot attend to later image tokens anyway: knocking that out is a no-op
    effect = knockout_effect(model, inp, "image", "bos", [0, 1])
    assert effect.abs().max() <= 1e-5


def test_heads_subset_only_affects_those_heads(pair):
    model, inp = pair
    heads = [0, 2]
    names = lambda n: n.endswith("hook_pattern")  # noqa: E731
    _, clean = model.run_with_cache(inp, names_filter=names)
    with knockout(model, inp, "image", "final", layers=[0], heads=heads):
        _, knocked = model.run_with_cache(inp, names_filter=names)
    before, after = clean["blocks.0.attn.hook_pattern"], knocked["blocks.0.attn.hook_pattern"]
    others = [h for h in range(model.cfg.n_heads) if h not in heads]
    assert torch.equal(before[:, others], after[:, others])
    image = inp.groups["image"]
    for b in range(len(inp)):
        assert after[b, heads, -1][:, image[b]].abs().max() == 0  # no final -> image attention
        assert before[b, heads, -1][:, image[b]].sum() > 1e-3
    # the later layer changes only through its inputs, in every head
    assert not torch.equal(
        clean["blocks.1.attn.hook_pattern"], knocked["blocks.1.attn.hook_pattern"]
    )


def test_window_layers():
    assert window_layers(0, 1, 4) == [0] and window_layers(3, 1, 4) == [3]
    assert window_layers(0, 3, 4) == [0, 1]
    with pytest.raises(ValueError, match="window size must be positive, got 0"):
        window_layers(1, 0, 4)
    with pytest.raises(ValueError, match="window centre -1 out of range for 4 layers"):
        window_layers(-1, 3, 4)
    assert window_layers(10, 9, 32) == list(range(6, 15))
    assert window_layers(1, 9, 32) == list(range(0, 6))
    assert window_layers(30, 9, 32) == list(range(26, 32))
    assert window_layers(3, 4, 8) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="out of range"):
        window_layers(8, 9, 8)


def test_clear_errors(pair):
    model, inp = pair
    with pytest.raises(KeyError, match="unknown token group 'objects'"):
        knockout_hooks(model, inp, "objects", "final", [0])
    with pytest.raises(ValueError, match="'system' is empty"):
        knockout_hooks(model, inp, "system", "final", [0])
    with pytest.raises(ValueError, match=r"layer\(s\) \[2\] out of range"):
        knockout_hooks(model, inp, "image", "final", [0, 2])
    with pytest.raises(ValueError, match="head"):
        knockout_hooks(model, inp, "image", "final", [0], heads=[99])
    with pytest.raises(ValueError, match=rf"head\(s\) \[{model.cfg.n_heads}\] out of range"):
        knockout_hooks(model, inp, "image", "final", [0], heads=[model.cfg.n_heads])
    with pytest.raises(ValueError, match="needs inp.answer_ids"):
        knockout_effect(model, model.prepare(noise_image(20, 28, 1), PROMPTS[0]), "image",
                        "final", [0])  # fmt: skip
    # same batch size, more columns than the input the hooks were built for (a shorter one may
    # be a prefix of it, run with a KV cache: accepted)
    longer_prompt = PROMPTS[0].replace("?", "? what is this ?")
    longer = model.prepare([noise_image(20, 28, 1), noise_image(30, 14, 2)],
                           [longer_prompt, longer_prompt])  # fmt: skip
    assert len(longer) == len(inp) and longer.shape[1] > inp.shape[1]
    with pytest.raises(ValueError, match="same input"):
        model.run_with_hooks(longer, fwd_hooks=knockout_hooks(model, inp, "image", "final", [0]))
    with pytest.raises(ValueError, match="bool of shape"):
        knockout_hooks(model, inp, torch.ones(3, 4, dtype=torch.bool), "final", [0])
    other = inp.select(0)
    with pytest.raises(ValueError, match="same input"):
        model.run_with_hooks(other, fwd_hooks=knockout_hooks(model, inp, "image", "final", [0]))


def test_query_left_without_any_key_is_refused(pair):
    """text -> text leaves BOS and the text before the image (which see only text) with no
    key: refused, not a uniform attention over every column (future tokens and padding
    included)."""
    model, inp = pair
    with pytest.raises(ValueError, match=r"\[0, 1, 2\] of example\(s\) \[0, 1\] \(token group"):
        knockout_hooks(model, inp, "text", "text", [1])
    with pytest.raises(ValueError, match=r"no key left to attend to in layer\(s\) \[0\]: every key "
                       "they may see is a source key; remove them from the target group$"):
        knockout_effect(model, inp, "text", "text", [0])  # the message says what to do
    # text after the image keeps the image keys: runs, and matches HF given the 4D mask
    target = inp.groups["question"] | inp.groups["final"]
    with knockout(model, inp, "text", target, [0, 1]):
        ours = model(inp)
    mask = knocked_mask(inp, inp.groups["text"], target)
    ref = hf_run(model, inp, {0: mask, 1: mask})
    real = inp.attention_mask.bool()
    assert (ours - ref)[real].abs().max() <= 1e-4


def test_no_key_check_follows_the_sliding_window(tiny_checkpoint):
    """Under full attention every question token still sees the image; within a sliding window
    of 4 the third question token sees only text keys, so text -> question leaves it none."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-next-mistral", sliding_window=4))
    inp = model.prepare(noise_image(20, 20, 1), PROMPTS[1])
    assert model.cfg.sliding_windows == (4, 4)
    with pytest.raises(ValueError, match="no key left"):
        knockout_hooks(model, inp, "text", "question", [0])
    full = HookedLVLM.from_pretrained(tiny_checkpoint("llava-next-mistral"))
    inp = full.prepare(noise_image(20, 20, 1), PROMPTS[1])
    assert len(knockout_hooks(full, inp, "text", "question", [0])) == 1


def test_padding_queries_in_an_explicit_target_are_left_alone(pair):
    """Left-padding rows have no key to begin with: not refused, and the real rows match HF."""
    model, inp = pair
    everything = torch.ones(inp.shape, dtype=torch.bool)
    with knockout(model, inp, "image", everything, [0, 1]):
        ours = model(inp)
    mask = knocked_mask(inp, inp.groups["image"], everything)
    ref = hf_run(model, inp, {0: mask, 1: mask})
    real = inp.attention_mask.bool()
    assert (ours - ref)[real].abs().max() <= 1e-4
    assert (ours - model(inp))[real].abs().max() > 1e-3


def test_knockout_under_a_prefix_kv_cache(pair):
    """Prefix run and suffix run under the same knockout give the full knocked-out run."""
    model, inp = pair
    cols = torch.arange(inp.shape[1])
    cut = int((inp.groups["image"] * cols).max()) + 1
    target = inp.groups["question"] | inp.groups["final"] | inp.groups["image"]
    with knockout(model, inp, "role", target, [0, 1]):
        full = model(inp)
        cache = model.run_prefix(inp, cut)
        suffix = model(inp.input_ids[:, cut:], past_kv_cache=cache)
    assert (suffix - full[:, cut:]).abs().max() <= 1e-4
    assert (full - model(inp))[:, cut:].abs().max() > 1e-3


@pytest.mark.parametrize(
    "kind", ["llava-llama", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "gemma3", "internvl", "idefics3",
             "paligemma2", "glm4v", "glm4v-moe", "llama4",
             "gemma4"]
)
def test_knocking_out_image_to_text_makes_the_answer_independent_of_the_image(
    tiny_checkpoint, kind
):
    model = HookedLVLM.from_pretrained(tiny_checkpoint(kind, chat_template=kind != "llava-llama"))
    a = model.prepare([noise_image(20, 28, 1), noise_image(30, 18, 2)], PROMPTS)
    b = model.prepare([noise_image(20, 28, 3), noise_image(30, 18, 4)], PROMPTS)
    assert torch.equal(a.input_ids, b.input_ids)
    text = a.groups["text"]
    assert (model(a)[text] - model(b)[text]).abs().max() > 1e-3  # the image matters
    every = list(range(model.cfg.n_layers))
    with knockout(model, a, "image", "text", every):
        out_a = model(a)
    with knockout(model, b, "image", "text", every):
        out_b = model(b)
    assert (out_a - out_b)[text].abs().max() <= 1e-5


def test_no_key_check_counts_later_tokens_of_the_same_image(tiny_checkpoint):
    """Gemma 3: the first image token also sees the later tokens of its image, so blocking
    every earlier key leaves it keys; causally it would have none."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("gemma3", chat_template=True))
    inp = model.prepare(noise_image(20, 20, 1), PROMPTS[1])
    first = inp.positions("image")[0]
    target = torch.zeros(inp.shape, dtype=torch.bool)
    target[0, first] = True
    source = inp.groups["text"] | target
    with knockout(model, inp, source, target, [0]):
        _, cache = model.run_with_cache(inp, names_filter="blocks.0.attn.hook_pattern")
    row = cache["blocks.0.attn.hook_pattern"][0, :, first]
    assert (row[:, source[0]] == 0).all() and torch.allclose(row.sum(-1), torch.ones(4))
    qwen = HookedLVLM.from_pretrained(tiny_checkpoint("qwen2-vl", chat_template=True))
    inp = qwen.prepare(noise_image(20, 20, 1), PROMPTS[1])
    target = torch.zeros(inp.shape, dtype=torch.bool)
    target[0, inp.positions("image")[0]] = True
    with pytest.raises(ValueError, match="no key left"):
        knockout_hooks(qwen, inp, inp.groups["text"] | target, target, [0])
