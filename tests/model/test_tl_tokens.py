"""TransformerLens' tokenisation helpers on HookedLVLM, as TransformerLens documents them:
to_tokens' keywords, to_str_tokens, to_single_token / to_single_str_token, get_token_position,
set_tokenizer, tokens_to_residual_directions and input_to_embed, on the shipped toy and on a
tiny grouped-query checkpoint, with a text prompt and an image input."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import noise_image, toy_or_gqa
from tests.model.tl_parity import parity

IMAGE_PROMPT = "USER: <image>\nwhat is the main object in this image ? ASSISTANT:"
TEXT = "what is the main object in this image ?"


@pytest.fixture(scope="module", params=["toy", "qwen2-gqa"])
def model(request, tiny_checkpoint):
    return toy_or_gqa(request.param, tiny_checkpoint)


def image_input(model):
    return model.prepare(noise_image(48, 48, 3), IMAGE_PROMPT)


def prompt_end(model, strs):
    """The position just past the image prompt's text "... ? ASSISTANT:" in ``strs`` (a family
    may append its own tokens after it, PaliGemma a newline)."""
    tail = model.to_str_tokens("? ASSISTANT:", prepend_bos=False)
    ends = [e for e in range(len(tail), len(strs) + 1) if strs[e - len(tail):e] == tail]
    assert ends, f"{tail} not in {strs}"
    assert not any(s.startswith("<img ") for s in strs[ends[-1]:])
    return ends[-1]


@parity("to_tokens", "works", "prepend_bos, padding_side, move_to_device, truncate as TL; "
        "default padding side left (prepare's and HF generation's), not the tokenizer's")
def test_to_tokens_keywords(model):
    bos = model.tokenizer.bos_token_id
    with_bos = model.to_tokens(TEXT)
    without = model.to_tokens(TEXT, prepend_bos=False)
    assert with_bos[0, 0] == bos and without[0, 0] != bos
    assert torch.equal(with_bos[0, 1:], without[0])
    pad = model.tokenizer.pad_token_id
    left = model.to_tokens(["a cat", TEXT], padding_side="left")
    right = model.to_tokens(["a cat", TEXT], padding_side="right")
    n = len(model.to_tokens("a cat")[0])
    gap = left.shape[1] - n
    assert gap > 0 and (left[0, :gap] == pad).all() and (right[0, n:] == pad).all()
    assert torch.equal(left[0, gap:], right[0, :n]) and torch.equal(left[1], right[1])
    assert torch.equal(model.to_tokens(["a cat", TEXT]), left)  # the default side
    assert model.to_tokens(TEXT, move_to_device=False).device.type == "cpu"
    long = " ".join(["the"] * (model.cfg.n_ctx + 10))
    assert model.to_tokens(long).shape[1] == model.cfg.n_ctx
    assert model.to_tokens(long, truncate=False).shape[1] == model.cfg.n_ctx + 11


def test_to_tokens_with_a_tokenizer_that_has_no_bos_token(model):
    """Qwen's tokenizers have no BOS token: the default prepend_bos adds nothing (the ids are the
    tokenizer's own, as HF's processor gives) instead of crashing on ``None + text``."""
    tok = model.tokenizer
    saved = tok.bos_token
    try:
        tok.bos_token = None
        own = tok(TEXT).input_ids
        assert model.to_tokens(TEXT)[0].tolist() == own
        assert model.to_tokens(TEXT, prepend_bos=True)[0].tolist() == own
    finally:
        tok.bos_token = saved
    assert model.to_tokens(TEXT)[0, 0] == tok.bos_token_id  # restored


@parity("to_str_tokens", "works", "strings, lists, token tensors (a [batch, pos] tensor gives a "
        "list per row where TL refuses it) and LVLMInputs, image positions named <img row,col>")
def test_to_str_tokens_text_tokens_and_image(model):
    ids = model.to_tokens(TEXT)[0].tolist()
    each = [model.tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in ids]
    assert model.to_str_tokens(TEXT) == each == model.to_str_tokens(torch.tensor(ids))
    assert model.to_str_tokens(TEXT, prepend_bos=False) == each[1:]
    assert model.to_str_tokens([TEXT, "a cat"], prepend_bos=False) == [
        each[1:], model.to_str_tokens("a cat", prepend_bos=False)]
    inp = image_input(model)
    strs = model.to_str_tokens(inp)
    n_img = int((inp.input_ids == model.cfg.image_token_id).sum())
    named = [s for s in strs if s.startswith("<img ")]  # not InternVL's own <img>
    if model.cfg.decoder.cross_attention is not None:  # one token per image, shown as itself
        token = model.tokenizer.convert_ids_to_tokens(model.cfg.image_token_id)
        named = [s for s in strs if s == token]
    assert len(strs) == inp.input_ids.shape[1] and len(named) == n_img > 0
    assert prompt_end(model, strs) > strs.index(named[-1])


@parity("to_single_token", "works", "raises TokenError, an AssertionError as TL's (and a "
        "ValueError), for several tokens; also refuses unknown words")
def test_to_single_token_and_back(model):
    cat = model.to_single_token("object")
    assert model.to_tokens("object", prepend_bos=False)[0].tolist() == [cat]
    assert model.to_single_str_token(cat) == "object"
    with pytest.raises(AssertionError, match="not a single token"):
        model.to_single_token("main object")
    with pytest.raises(ValueError, match="not a single token"):
        model.to_single_token("main object")


@parity("to_single_str_token", "works", "an int id (or one-element tensor) -> its text; other "
        "input raises an AssertionError as TL's")
def test_to_single_str_token_errors(model):
    with pytest.raises(AssertionError):
        model.to_single_str_token("object")
    with pytest.raises(AssertionError, match="outside the vocabulary"):
        model.to_single_str_token(10**6)
    assert model.to_single_str_token(torch.tensor(model.to_single_token("is"))) == "is"


@parity("get_token_position", "works", "first/last mode; on an LVLMInput every image token "
        "counts as a position")
def test_get_token_position(model):
    text = "the cat is the main object"
    if "cat" not in model.tokenizer.get_vocab():
        text = "the star is the main object"
    assert model.get_token_position("the", text) == 1  # after BOS
    assert model.get_token_position("the", text, mode="last") == 4
    assert model.get_token_position("the", text, prepend_bos=False, mode="last") == 3
    the = model.to_single_token("the")
    assert model.get_token_position(the, model.to_tokens(text)) == 1
    assert model.get_token_position(torch.tensor(the), model.to_tokens(text)[0], "last") == 4
    inp = image_input(model)
    strs = model.to_str_tokens(inp)
    pos = model.get_token_position("what", inp)
    n_img = int((inp.input_ids == model.cfg.image_token_id).sum())
    assert strs[pos] == "what" and pos > n_img  # the image tokens come first and count
    assert model.get_token_position("?", inp, mode="last") == prompt_end(model, strs) - 3
    with pytest.raises(AssertionError, match="does not occur"):
        model.get_token_position("star" if "cat" in text else "circle", text)
    with pytest.raises(AssertionError, match="one prompt"):
        model.get_token_position("the", model.to_tokens([text, text]))
    with pytest.raises(ValueError, match="mode"):
        model.get_token_position("the", text, mode="middle")


@parity("set_tokenizer", "works", "default_padding_side as TL; a tokenizer without a pad "
        "token pads with EOS; refuses one larger than the vocabulary")
def test_set_tokenizer(model):
    original = model.tokenizer
    try:
        tok = copy.deepcopy(original)
        tok.pad_token = None
        model.set_tokenizer(tok, default_padding_side="right")
        assert model.tokenizer is tok and tok.pad_token == tok.eos_token
        padded = model.to_tokens(["a", TEXT])
        assert padded[0, -1] == tok.eos_token_id and padded[0, 1] != tok.eos_token_id
        big = copy.deepcopy(original)
        big.add_tokens([f"extra{i}" for i in range(model.cfg.d_vocab)])
        with pytest.raises(ValueError, match="vocabulary"):
            model.set_tokenizer(big)
    finally:
        model.set_tokenizer(original, default_padding_side="left")


@parity("tokens_to_residual_directions", "works", "shapes as TL (one token -> [d_model], a "
        "tensor -> its shape + d_model, a list -> [n, d_model]); ln_final's weight folded in, "
        "as TL with fold_ln")
@pytest.mark.parametrize("with_image", [False, True])
def test_tokens_to_residual_directions(model, with_image):
    d = model.cfg.d_model
    obj = model.to_single_token("object")
    assert model.tokens_to_residual_directions("object").shape == (d,)
    assert model.tokens_to_residual_directions(obj).shape == (d,)
    assert model.tokens_to_residual_directions(torch.tensor([obj])).shape == (d,)
    assert model.tokens_to_residual_directions(torch.tensor([obj, 5])).shape == (2, d)
    assert model.tokens_to_residual_directions(torch.tensor([[obj, 5, 6]] * 2)).shape == (2, 3, d)
    assert model.tokens_to_residual_directions([obj]).shape == (1, d)
    both = model.tokens_to_residual_directions(["object", "is"])
    assert torch.equal(both[0], model.tokens_to_residual_directions(obj))
    # folding: logit = (final resid / ln_final scale) . direction + b_U, at any position
    inp = image_input(model) if with_image else model.to_tokens(TEXT)
    logits, cache = model.run_with_cache(inp)
    x = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][0]
    scale = cache["ln_final.hook_scale"][0]
    got = (x / scale) @ both.T + model.b_U[[obj, model.to_single_token("is")]]
    torch.testing.assert_close(got, logits[0][:, [obj, model.to_single_token("is")]],
                               atol=1e-4, rtol=1e-4)


@parity("input_to_embed", "works", "(residual, tokens, None, attention_mask); residual is "
        "hook_embed's output, image embeddings spliced in; takes LVLMInputs too")
def test_input_to_embed(model):
    for inp in (TEXT, image_input(model)):
        resid, tokens, pos_embed, mask = model.input_to_embed(inp)
        _, cache = model.run_with_cache(inp, names_filter="blocks.0.hook_resid_pre")
        assert pos_embed is None and mask.shape == tokens.shape and bool(mask.all())
        assert torch.equal(resid, cache["blocks.0.hook_resid_pre"])
    resid, tokens, _, mask = model.input_to_embed(["a", TEXT], prepend_bos=False)
    assert tokens.shape == mask.shape == resid.shape[:2] and tokens[0, 0] != tokens[1, 0]
    assert mask[0].sum() == 1 and mask[1].all()
    _, cache = model.run_with_cache(tokens, attention_mask=mask,
                                    names_filter="blocks.0.hook_resid_pre")
    assert torch.equal(resid, cache["blocks.0.hook_resid_pre"])
