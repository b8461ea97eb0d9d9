"""TransformerLens' conditional hook points and their switches on HookedLVLM:
``set_use_attn_result`` (``hook_result``), ``set_use_split_qkv_input`` (``hook_q/k/v_input``),
``set_use_hook_mlp_in`` (``hook_mlp_in``), ``set_use_attn_in`` (``hook_attn_in``), and
``hook_tokens``; a hook on a switched-off point is refused naming the switch; the ablation
engine and knockout work with every switch on. On the toy and on a tiny grouped-query
checkpoint, with a text prompt and an image input."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from lvlm_lens.interventions.knockout import knockout_effect
from tests.helpers import (
    TL_TEXT,
    attention_layers,
    check_engine_equals_reference,
    text_or_image_input,
    toy_or_gqa,
)
from tests.model.tl_parity import parity

TEXT = TL_TEXT
#: Each switch and a point it turns on ({a}: a self-attention layer, {b}: the last layer).
SWITCHES = {
    "use_attn_result": "blocks.{a}.attn.hook_result",
    "use_split_qkv_input": "blocks.{a}.hook_k_input",
    "use_hook_mlp_in": "blocks.{b}.hook_mlp_in",
    "use_attn_in": "blocks.{a}.hook_attn_in",
}


def point(model, switch):
    """``SWITCHES[switch]`` in ``model``'s layers."""
    return SWITCHES[switch].format(a=attention_layers(model)[0], b=model.cfg.n_layers - 1)


@pytest.fixture(scope="module", params=["toy", "qwen2-gqa"])
def model(request, tiny_checkpoint):
    return toy_or_gqa(request.param, tiny_checkpoint)


@contextmanager
def switched(model, *names):
    for n in names:
        getattr(model, f"set_{n}")(True)
    try:
        yield model
    finally:
        for n in names:
            getattr(model, f"set_{n}")(False)


def noop(t, hook):
    return None


@parity("set_use_attn_result / set_use_split_qkv_input / set_use_hook_mlp_in / set_use_attn_in",
        "works", "a hook on a conditional point whose switch is off is refused (ValueError "
        "naming the switch: run_with_hooks, hooks, add_hook, a run_with_cache filter naming "
        "it); name filters and run_with_cache() skip such points")
@pytest.mark.parametrize("switch", list(SWITCHES))
def test_switched_off_points_are_refused_naming_the_switch(model, switch):
    name = point(model, switch)
    x = text_or_image_input(model, "text")
    msg = f"{name} fires only with {switch} on: call model.set_{switch}\\(True\\) first"
    with pytest.raises(ValueError, match=msg):
        model.run_with_hooks(x, fwd_hooks=[(name, noop)])
    with pytest.raises(ValueError, match=msg):
        model.add_hook(name, noop)
    with pytest.raises(ValueError, match=msg):
        model.run_with_cache(x, names_filter=[name])
    _, cache = model.run_with_cache(x)
    assert name not in cache.keys() and "blocks.0.hook_resid_pre" in cache.keys()
    seen = []
    model.run_with_hooks(x, fwd_hooks=[(lambda n: n == name, lambda t, hook: seen.append(1))])
    assert not seen
    with switched(model, switch):
        _, cache = model.run_with_cache(x)
        assert name in cache.keys()


@pytest.mark.parametrize("name", ["blocks.0.hook_attn_in", "blocks.0.hook_q_input",
                                  "blocks.0.attn.hook_k_input"])
def test_split_points_of_a_linear_attention_layer_are_refused(tiny_checkpoint, name):
    """Qwen3.5's layer 0 is linear attention, whose input is never split per head: a hook
    there is refused in one line even with the switches on, not accepted and never called."""
    from lvlm_lens import HookedLVLM

    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen3.5"))
    assert 0 not in attention_layers(model)
    x = text_or_image_input(model, "text")
    msg = f"{name.replace('attn.hook', 'hook')} is not a hook point of this model"
    with switched(model, *SWITCHES):
        with pytest.raises(ValueError, match=msg):
            model.run_with_hooks(x, fwd_hooks=[(name, noop)])
        with pytest.raises(ValueError, match=msg):
            model.run_with_cache(x, names_filter=[name.replace("attn.hook", "hook")])
        # a name filter is not refused: it finds the self-attention layers' points alone
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_attn_in"))
    assert list(cache.keys()) == [f"blocks.{i}.hook_attn_in" for i in attention_layers(model)]


@parity("hook_attn_in / hook_q_input / hook_k_input / hook_v_input / hook_mlp_in / "
        "hook_result / hook_tokens", "works", "TL's shapes: attn_in and q_input [batch, pos, "
        "head, d_model], k/v_input [batch, pos, kv_head, d_model] (GQA: key/value head j reads "
        "attn_in's copy j, as TL), each a copy of resid_pre; hook_mlp_in is resid_mid; logits "
        "within fp32 rounding (1e-4: hook_result sums the heads in another order) with every "
        "switch on")
@pytest.mark.parametrize("kind", ["text", "image"])
def test_every_switch_on_fires_tl_shapes_and_keeps_logits(model, kind):
    x = text_or_image_input(model, kind)
    plain, clean = model.run_with_cache(x)
    assert torch.equal(clean["hook_tokens"], x if kind == "text" else x.input_ids)
    with switched(model, *SWITCHES):
        logits, cache = model.run_with_cache(x)
    torch.testing.assert_close(logits, plain, atol=1e-4, rtol=1e-4)
    cfg = model.cfg
    b, t = logits.shape[:2]
    attention = attention_layers(model)
    for layer in range(cfg.n_layers):
        pre, mid = cache[f"blocks.{layer}.hook_resid_pre"], cache[f"blocks.{layer}.hook_resid_mid"]
        assert torch.equal(cache[f"blocks.{layer}.hook_mlp_in"], mid)
        if layer not in attention:  # linear attention: its input is never split per head
            assert not any(n.startswith(f"blocks.{layer}.") and n.endswith(
                ("attn_in", "q_input", "k_input", "v_input")) for n in cache.keys())
            continue
        attn_in = cache[f"blocks.{layer}.hook_attn_in"]
        assert attn_in.shape == (b, t, cfg.n_heads, cfg.d_model)
        assert torch.equal(attn_in, pre[:, :, None].expand_as(attn_in))
        q_in = cache[f"blocks.{layer}.hook_q_input"]
        assert torch.equal(q_in, attn_in)
        for kv in ("k", "v"):
            got = cache[f"blocks.{layer}.hook_{kv}_input"]
            assert got.shape == (b, t, cfg.n_key_value_heads, cfg.d_model)
            assert torch.equal(got, attn_in[:, :, : cfg.n_key_value_heads])
        heads = cache[f"blocks.{layer}.attn.hook_result"]
        assert heads.shape == (b, t, cfg.n_heads, cfg.d_model)
        attn_out = heads.sum(2) + model.blocks[layer].attn.b_O
        if cfg.decoder.sandwich_norms:  # hook_attn_out is after ln1_post, as in TL's Gemma 2 block
            attn_out = model.blocks[layer].ln1_post(attn_out)
        torch.testing.assert_close(attn_out, cache[f"blocks.{layer}.hook_attn_out"],
                                   atol=1e-5, rtol=1e-4)


def test_editing_one_heads_input_changes_that_head_alone(model):
    x = text_or_image_input(model, "image")
    cfg = model.cfg
    g = cfg.n_heads // cfg.n_key_value_heads
    _, clean = model.run_with_cache(x)
    noise = torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(0))

    def shift(head):
        def hook(t, hook):
            t[:, :, head] += noise
        return hook

    names = lambda n: n.startswith("blocks.0.attn.hook_")  # noqa: E731
    with switched(model, "use_split_qkv_input"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_k_input", shift(0))]):
            _, edited = model.run_with_cache(x, names_filter=names)
    k, k0 = edited["blocks.0.attn.hook_k"], clean["blocks.0.attn.hook_k"]
    assert (k[:, :, 0] - k0[:, :, 0]).abs().max() > 1e-3
    torch.testing.assert_close(k[:, :, 1:], k0[:, :, 1:], atol=1e-5, rtol=1e-5)
    q, q0 = edited["blocks.0.attn.hook_q"], clean["blocks.0.attn.hook_q"]
    torch.testing.assert_close(q, q0, atol=1e-5, rtol=1e-5)  # queries untouched
    z, z0 = edited["blocks.0.attn.hook_z"], clean["blocks.0.attn.hook_z"]
    assert (z[:, :, :g] - z0[:, :, :g]).abs().max() > 1e-4  # the query heads reading K/V 0
    torch.testing.assert_close(z[:, :, g:], z0[:, :, g:], atol=1e-5, rtol=1e-5)
    # hook_attn_in: the last query head's copy is read by that query head only
    last = cfg.n_heads - 1
    with switched(model, "use_attn_in"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_attn_in", shift(last))]):
            _, edited = model.run_with_cache(x, names_filter=names)
    q = edited["blocks.0.attn.hook_q"]
    assert (q[:, :, last] - q0[:, :, last]).abs().max() > 1e-3
    torch.testing.assert_close(q[:, :, :last], q0[:, :, :last], atol=1e-5, rtol=1e-5)
    if g > 1:  # the last copy feeds no key/value head
        torch.testing.assert_close(edited["blocks.0.attn.hook_k"], k0, atol=1e-5, rtol=1e-5)
    # hook_mlp_in: the MLP reads the edit, the residual stream it is added to does not
    with switched(model, "use_hook_mlp_in"):
        hooks = [("blocks.0.hook_mlp_in", lambda t, hook: t + noise)]
        with model.hooks(fwd_hooks=hooks):
            _, edited = model.run_with_cache(x, names_filter=lambda n: n.startswith("blocks.0"))
    assert torch.equal(edited["blocks.0.hook_resid_mid"], clean["blocks.0.hook_resid_mid"])
    assert (edited["blocks.0.hook_mlp_out"] - clean["blocks.0.hook_mlp_out"]).abs().max() > 1e-4


def test_hook_tokens_edit_is_what_gets_embedded(model):
    x = text_or_image_input(model, "text")
    other = model.to_tokens("a cat sat on the mat today and it is happy ?")[:, : x.shape[1]]
    assert other.shape == x.shape
    swapped = model.run_with_hooks(x, fwd_hooks=[("hook_tokens", lambda t, hook: other)])
    torch.testing.assert_close(swapped, model(other), atol=0, rtol=0)


def test_engine_and_knockout_work_with_every_switch_on(model):
    inp = text_or_image_input(model, "image")
    clean = knockout_effect(model, inp, "image", "final", [0, 1])
    with switched(model, *SWITCHES):
        check_engine_equals_reference(model, inp, "mean", "all", n_masks=8, batch_size=4,
                                      rate=0.3)
        switched_on = knockout_effect(model, inp, "image", "final", [0, 1])
    torch.testing.assert_close(switched_on, clean, atol=1e-5, rtol=1e-4)
    assert clean.abs().max() > 1e-4
