"""Qwen3.5: Gated-DeltaNet linear-attention layers between output-gated full-attention layers.

Logits = HF eager (fp32, its torch fallback of the chunked delta rule) on a left-padded batch
with images of two sizes, per example and text-only; the delta rule against answers derived by
hand; the per-head hooks (shapes, ``hook_z @ W_O`` = the layer's output, an edit of
``hook_v`` changes only later positions); ``run_with_cache`` = the plain run; a KV-cache
continuation refused in one line."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.model.attention import Attention
from lvlm_lens.model.linear_attention import GatedDeltaNet, delta_rule
from tests.helpers import PROMPTS, hf_logits, noise_image

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


def test_a_kv_cache_continuation_is_refused(pair):
    model, _ = pair
    inp = model.prepare(IMAGES[:1], PROMPTS[:1])
    with pytest.raises(ValueError, match="linear-attention layers cannot continue a KV cache"):
        model.generate(inp, max_new_tokens=2)
