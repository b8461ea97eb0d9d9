"""TransformerLens' forward semantics on HookedLVLM: the hooks a decoder fires and their order,
``return_type=None`` / ``stop_at_layer`` / ``start_at_layer``, ``prepend_bos`` and
``padding_side`` (left and right padding both give each row its unpadded logits), and
``return_type="loss"`` / ``"both"`` with ``loss_per_token``. On the toy and on a tiny
grouped-query checkpoint, with a text prompt and an image input."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TL_TEXT, text_or_image_input, toy_or_gqa
from tests.model.tl_parity import parity

TEXT = TL_TEXT
TEXTS = ["what is it ?", "a much longer prompt about the main object in this image ?"]
BLOCK = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q",
         "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k",
         "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
         "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre",
         "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]
FINAL = ["ln_final.hook_scale", "ln_final.hook_normalized"]


@pytest.fixture(scope="module", params=["toy", "qwen2-gqa"])
def model(request, tiny_checkpoint):
    return toy_or_gqa(request.param, tiny_checkpoint)


def fired(model, x, **kwargs):
    names = []
    model.run_with_hooks(x, fwd_hooks=[(lambda n: True, lambda t, hook: names.append(hook.name))],
                         **kwargs)
    return names


def expected(model, kind, layers):
    head = ["hook_tokens"] + (["hook_image_embeds"] if kind == "image" else []) + ["hook_embed"]
    return head + [f"blocks.{layer}.{n}" for layer in layers for n in BLOCK]


@parity("hook names and order", "works", "a TL gated-MLP decoder's: hook_tokens, hook_embed, "
        "per block hook_resid_pre ... hook_resid_post, ln_final.hook_scale / hook_normalized "
        "(no hook_pos_embed: rotary; no unembed hooks, as HookedTransformer); image inputs add "
        "hook_image_embeds before hook_embed")
@pytest.mark.parametrize("kind", ["text", "image"])
def test_hooks_fire_in_tl_decoder_order(model, kind):
    x = text_or_image_input(model, kind)
    n = model.cfg.n_layers
    assert fired(model, x) == expected(model, kind, range(n)) + FINAL


@parity("return_type=None / stop_at_layer", "works", "return_type=None runs ln_final and fires "
        "every hook a logits run fires; stop_at_layer=k (negative too) fires the embedding and "
        "blocks [0, k) only and returns the residual stream")
@pytest.mark.parametrize("kind", ["text", "image"])
def test_return_type_none_and_stop_at_layer_fire_what_tl_fires(model, kind):
    x = text_or_image_input(model, kind)
    n = model.cfg.n_layers
    assert fired(model, x, return_type=None) == expected(model, kind, range(n)) + FINAL
    assert model(x, return_type=None) is None
    for k in (1, -1):
        assert fired(model, x, stop_at_layer=k) == expected(model, kind, range(n)[:k])
    _, cache = model.run_with_cache(x)
    resid = model(x, stop_at_layer=2)
    assert torch.equal(resid, cache["blocks.1.hook_resid_post"])


@parity("start_at_layer (with tokens=)", "works", "input is the residual stream entering the "
        "block; tokens= (the LVLMInput or token ids it came from) gives its mask, positions "
        "and the loss; stop_at_layer then start_at_layer gives the full run's logits exactly")
@pytest.mark.parametrize("kind", ["text", "image"])
def test_start_at_layer_continues_a_stopped_run(model, kind):
    x = text_or_image_input(model, kind)
    n = model.cfg.n_layers
    resid = model(x, stop_at_layer=2)
    names = fired(model, resid, start_at_layer=2, tokens=x)
    assert names == [f"blocks.{layer}.{b}" for layer in range(2, n) for b in BLOCK] + FINAL
    logits = model(resid, start_at_layer=2, tokens=x)
    torch.testing.assert_close(logits, model(x), atol=0, rtol=0)
    loss = model(resid, "loss", start_at_layer=2, tokens=x)
    torch.testing.assert_close(loss, model(x, "loss"), atol=0, rtol=0)
    if kind == "text":  # text without padding needs no tokens
        torch.testing.assert_close(model(resid, start_at_layer=2), logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="pass tokens="):
        model(resid, "loss", start_at_layer=2)
    with pytest.raises(TypeError, match="residual stream"):
        model(x if kind == "text" else x.input_ids, start_at_layer=2)


@parity("forward(prepend_bos=, padding_side=)", "works", "strings are tokenized as to_tokens "
        "does; left and right padding both give every row the logits and per-token loss it "
        "has alone (positions count real tokens, padded keys and targets are masked)")
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_gives_each_row_its_unpadded_logits(model, side):
    batch = model(TEXTS, padding_side=side)
    per_token = model(TEXTS, "loss", loss_per_token=True, padding_side=side)
    tokens, mask = model.encode_text(TEXTS, padding_side=side)
    assert mask.sum() < mask.numel()  # padded
    assert per_token.shape == (len(TEXTS), tokens.shape[1] - 1)
    for row, text in enumerate(TEXTS):
        alone = model(text)
        keep = mask[row].bool()
        torch.testing.assert_close(batch[row][keep], alone[0], atol=1e-5, rtol=1e-4)
        alone_loss = model(text, "loss", loss_per_token=True)[0]
        both = keep[:-1] & keep[1:]  # TL: source and target real (left: not the first token)
        torch.testing.assert_close(per_token[row][both], alone_loss, atol=1e-5, rtol=1e-4)
        assert (per_token[row][~both] == 0).all()
    mean = model(TEXTS, "loss", padding_side=side)
    pairs = (mask[:, :-1] * mask[:, 1:]).sum()
    torch.testing.assert_close(mean, per_token.sum() / pairs)
    no_bos = model(TEXT, prepend_bos=False)
    torch.testing.assert_close(no_bos, model(model.to_tokens(TEXT, prepend_bos=False)),
                               atol=0, rtol=0)
    assert no_bos.shape[1] == model.to_tokens(TEXT).shape[1] - 1


@parity("return_type='loss' / 'both', loss_per_token", "works", "next-token cross-entropy "
        "(mean, or [batch, pos - 1] per token); image and padded targets count 0, so an image "
        "input's loss is its text tokens' loss")
@pytest.mark.parametrize("kind", ["text", "image"])
def test_loss_is_next_token_cross_entropy(model, kind):
    x = text_or_image_input(model, kind)
    logits, loss = model(x, "both")
    torch.testing.assert_close(logits, model(x), atol=0, rtol=0)
    ids = x if kind == "text" else x.input_ids
    mask = torch.ones_like(ids) if kind == "text" else x.attention_mask
    ok = (mask[:, :-1] > 0) & (mask[:, 1:] > 0) & (ids[:, 1:] != model.cfg.image_token_id)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:],
                                           reduction="none")
    per_token = model(x, "loss", loss_per_token=True)
    torch.testing.assert_close(per_token, ce * ok, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ce[ok].mean(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="return_type must be"):
        model(x, "probs")
