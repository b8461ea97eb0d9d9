"""PaliGemma 2 against Hugging Face (fp32, eager): tokens = its processor, logits, greedy
generation, and the head-ablation engine under the prefix-LM mask."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor

from lvlm_lens import HookedLVLM
from tests.helpers import check_engine_equals_reference, noise_image

PROMPTS = ["<image>what is this ?", "<image>what ?"]


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    folder = tiny_checkpoint("paligemma2")
    model = HookedLVLM.from_pretrained(folder)
    reference = type(model.hf_model).from_pretrained(folder, attn_implementation="eager").eval()
    images = [noise_image(20, 20, 1), noise_image(28, 16, 2)]
    return model, reference, AutoProcessor.from_pretrained(folder), images


def test_spec(setup):
    spec = setup[0].cfg.decoder
    assert spec.bidirectional_prefix and spec.position_offset == 1
    assert spec.attn_softcap == 1.0 and spec.logit_softcap == 2.0
    assert setup[0].cfg.sliding_windows == (6, None)  # shorter than the prompt


def test_tokens_equal_processor(setup):
    model, _, processor, images = setup
    inp = model.prepare(images, PROMPTS)
    for i, (image, prompt) in enumerate(zip(images, PROMPTS, strict=True)):
        theirs = processor(images=[image], text=[prompt], return_tensors="pt")
        ours = inp.select(i)
        assert ours.input_ids.tolist() == theirs.input_ids.tolist()
        assert torch.allclose(ours.pixel_values, theirs.pixel_values)


def test_logits_equal_hf(setup):
    model, reference, _, images = setup
    inp = model.prepare(images, PROMPTS)
    assert (inp.attention_mask == 0).any()
    with torch.no_grad():
        ours = model(inp)
        theirs = reference(**inp.to_hf()).logits
    real = inp.attention_mask.bool()
    assert (ours - theirs)[real].abs().max() <= 1e-4
    assert ours.std() > 0.05
    # with explicit positions HF's padded batch gives each row what it gives alone
    with torch.no_grad():
        alone = model(inp.select(1))
    assert (alone[0] - ours[1][real[1]]).abs().max() <= 1e-4


def test_text_only_logits_equal_hf(setup):
    model, reference, _, _ = setup
    inp = model.prepare(None, ["what is this ?"])
    with torch.no_grad():
        ours, theirs = model(inp), reference(**inp.to_hf()).logits
    assert (ours - theirs).abs().max() <= 1e-4


def test_prefix_attends_both_ways(setup):
    model, _, _, images = setup
    inp = model.prepare(images[:1], PROMPTS[:1])
    _, cache = model.run_with_cache(inp, names_filter="blocks.1.attn.hook_pattern")
    pattern = cache["blocks.1.attn.hook_pattern"][0]
    assert (pattern[:, 0, 1:] > 0).all()  # the first image token reads the question


def test_greedy_generate_equals_hf(setup):
    model, reference, _, images = setup
    inp = model.prepare(images, PROMPTS)
    ours = model.generate(inp, max_new_tokens=5, return_type="tokens", stop_at_eos=False)
    theirs = reference.generate(**inp.to_hf(generate=True), max_new_tokens=5, do_sample=False,
                                min_new_tokens=5)
    assert ours[:, inp.shape[1]:].tolist() == theirs[:, inp.shape[1]:].tolist()


@pytest.mark.parametrize("scope", ["text", "all"])
@pytest.mark.parametrize("baseline", ["mean", "blank"])
def test_engine_equals_reference(setup, baseline, scope):
    """The image's K/V depend on the question (prefix-LM), so scope text cannot cache a prefix
    cut after the image: the engine runs full sequences there (``splits_block``)."""
    model, _, _, images = setup
    inp = model.prepare(images, PROMPTS)
    check_engine_equals_reference(model, inp, baseline, scope, n_masks=8, batch_size=3, rate=0.4)


def test_prefix_cut_refused(setup):
    model, _, _, images = setup
    inp = model.prepare(images[:1], PROMPTS[:1])
    with pytest.raises(ValueError, match="attend to each other both ways"):
        model.run_prefix(inp, 18)


def test_suffix_after_cached_prompt_is_causal_as_hf(setup):
    """A suffix run after the cached prompt = HF on prompt + suffix with the suffix's token
    type 1 (causal), as the processor's ``suffix=`` gives."""
    model, reference, _, images = setup
    inp = model.prepare(images, PROMPTS)
    suffix = torch.tensor([[model.to_single_token("red"), model.to_single_token("star")]] * 2)
    with torch.no_grad():
        ours = model(suffix, past_kv_cache=model.run_prefix(inp))
        kw = inp.to_hf()
        n = inp.shape[1]
        kw["input_ids"] = torch.cat([kw["input_ids"], suffix], 1)
        kw["attention_mask"] = torch.cat([kw["attention_mask"], torch.ones_like(suffix)], 1)
        last = kw["position_ids"][:, -1:]
        kw["position_ids"] = torch.cat([kw["position_ids"], last + 1, last + 2], 1)
        kw["token_type_ids"] = torch.cat([kw["token_type_ids"], torch.ones_like(suffix)], 1)
        theirs = reference(**kw).logits[:, n:]
    assert (ours - theirs).abs().max() <= 1e-4

