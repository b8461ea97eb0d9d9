"""``generate`` as TransformerLens documents it, on the shipped toy and a tiny grouped-query
checkpoint, with text prompts and image inputs: every input and return type, the sampling
options (checked against an independent draw from the same seed), EOS handling, step logits,
TransformerLens' and our KV caches, and ``return_cache`` on image inputs; greedy output equals
HF ``generate`` on every tiny family."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from lvlm_lens import HookedLVLM
from lvlm_lens.model.generate import extend_input
from lvlm_lens.toy import load_toy
from tests.helpers import PROMPTS, hf_kwargs, noise_image
from tests.model.tl_parity import parity

IMAGE_PROMPT = "USER: <image>\nwhat is the main object in this image ? ASSISTANT:"
TEXT = "what is the main object in this image ?"
FAMILIES = ["llava-llama", "llava-onevision-qwen2", "llava-next-mistral", "qwen2-vl",
            "qwen2.5-vl", "qwen3-vl", "gemma3", "internvl", "idefics3"]
FAMILIES += ["qwen3.5", "qwen3.5-moe"]
FAMILIES += ["glm4v", "glm4v-moe"]
FAMILIES += ["llama4"]
FAMILIES += ["mistral3"]
FAMILIES += ["mllama"]
FAMILIES += ["gemma4"]


@pytest.fixture(scope="module", params=["toy", "qwen2-gqa"])
def model(request, tiny_checkpoint):
    if request.param == "toy":
        return load_toy()
    m = HookedLVLM.from_pretrained(tiny_checkpoint("llava-onevision-qwen2"))
    assert m.cfg.n_key_value_heads < m.cfg.n_heads  # grouped-query attention
    return m


def image_input(model, n=1):
    return model.prepare([noise_image(48, 48, s) for s in range(n)], [IMAGE_PROMPT] * n)


def greedy_by_hand(model, inp, n):
    """Greedy continuation by full forward passes over the growing input, without a cache."""
    new = inp.input_ids.new_zeros(len(inp), 0)
    for _ in range(n):
        logits = model(extend_input(inp, new, torch.ones_like(new)))
        new = torch.cat([new, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return torch.cat([inp.input_ids, new], 1)


@parity("generate(input=...)", "works", "str, list[str] (left-padded), tokens, embeddings "
        "[batch, pos, d_model] and LVLMInput (images); greedy by default, where TL samples")
def test_generate_every_input_kind(model):
    n = 4
    text = model.generate(TEXT, n, stop_at_eos=False)
    tokens = model.to_tokens(TEXT)
    by_hand = greedy_by_hand(model, model._as_input(tokens), n)
    assert torch.equal(model.generate(tokens, n, stop_at_eos=False), by_hand)
    assert text == model.tokenizer.decode(by_hand[0], skip_special_tokens=True)
    assert model.generate([TEXT], n, stop_at_eos=False) == text  # one row: what TL returns
    two = model.generate([TEXT, "a cat"], n, stop_at_eos=False)
    assert isinstance(two, list) and two[0] == text
    inp = image_input(model)
    ours = model.generate(inp, n, stop_at_eos=False)
    assert torch.equal(ours, greedy_by_hand(model, inp, n))
    # embeddings of the image input: the same new tokens, only those returned (as TL)
    embeds = model.embed_input(inp)
    new = model.generate(embeds, n, stop_at_eos=False, return_type="tokens")
    assert torch.equal(new, ours[:, inp.shape[1]:])


@parity("generate(return_type=...)", "works", "'str', 'tokens', 'embeds' (prompt embeddings, "
        "image spliced in, then the new tokens') and 'input' (text for text, embeddings for "
        "embeddings, tokens otherwise); a one-row batch gives one string, as TL")
def test_generate_return_types(model):
    inp = image_input(model)
    tokens = model.generate(inp, 3, stop_at_eos=False)
    assert tokens.shape == (1, inp.shape[1] + 3)
    assert model.generate(inp, 3, stop_at_eos=False, return_type="str") == \
        model.tokenizer.decode(tokens[0], skip_special_tokens=True)
    embeds = model.generate(inp, 3, stop_at_eos=False, return_type="embeds")
    new = tokens[:, inp.shape[1]:]
    expected = torch.cat([model.embed_input(inp), model.embed(new)], 1)
    assert torch.equal(embeds, expected)
    from_embeds = model.generate(model.embed_input(inp), 3, stop_at_eos=False)
    assert torch.equal(from_embeds, expected)  # "input" for embeddings: embeddings
    two = model.generate(image_input(model, 2), 3, stop_at_eos=False, return_type="str")
    assert isinstance(two, list) and len(two) == 2
    with pytest.raises(ValueError, match="return_type"):
        model.generate(inp, 3, return_type="logits")


@parity("generate(output_logits=True)", "works", "a GenerateDecoderOnlyOutput: sequences and "
        "each step's next-token logits [batch, d_vocab]")
def test_generate_output_logits_are_each_steps(model):
    inp = image_input(model)
    out = model.generate(inp, 3, stop_at_eos=False, output_logits=True)
    assert torch.equal(out.sequences, model.generate(inp, 3, stop_at_eos=False))
    assert len(out.logits) == 3
    p = inp.shape[1]
    for i, step in enumerate(out.logits):
        new = out.sequences[:, p:p + i]
        full = model(extend_input(inp, new, torch.ones_like(new)))[:, -1]
        assert (step - full).abs().max() <= 1e-4


@parity("generate(do_sample=True, temperature, top_k, top_p)", "works", "TL's sampling on "
        "torch's global generator: a seed reproduces the output; top_k=1 and a tiny top_p are "
        "greedy")
def test_seeded_sampling(model):
    inp = image_input(model)
    kw = dict(max_new_tokens=6, stop_at_eos=False, do_sample=True, new_tokens_only=True)
    torch.manual_seed(3)
    a = model.generate(inp, temperature=3.0, **kw)
    torch.manual_seed(3)
    assert torch.equal(model.generate(inp, temperature=3.0, **kw), a)
    draws = set()
    for seed in range(6):
        torch.manual_seed(seed)
        draws.add(tuple(model.generate(inp, temperature=3.0, **kw)[0].tolist()))
    assert len(draws) > 1  # the seed matters
    # the first token is a draw from softmax(logits / T), the same draw from the same seed
    logits = model(inp)[:, -1]
    for seed in range(3):
        torch.manual_seed(seed)
        expected = torch.distributions.Categorical(logits=logits.float() / 3.0).sample()
        torch.manual_seed(seed)
        first = model.generate(inp, 1, do_sample=True, temperature=3.0, new_tokens_only=True)
        assert torch.equal(first[:, 0], expected)
    greedy = model.generate(inp, 6, stop_at_eos=False, new_tokens_only=True)
    assert torch.equal(model.generate(inp, top_k=1, temperature=3.0, **kw), greedy)
    assert torch.equal(model.generate(inp, top_p=1e-6, temperature=3.0, **kw), greedy)


@parity("generate(freq_penalty=...)", "works", "counts the row's real text tokens so far "
        "(prompt and new; not image placeholders or padding), as TL's sample_logits")
def test_freq_penalty_forbids_repeats(model):
    inp = image_input(model)
    torch.manual_seed(0)
    new = model.generate(inp, 5, stop_at_eos=False, do_sample=True, freq_penalty=1e4,
                         new_tokens_only=True)[0].tolist()
    prompt = set(inp.input_ids[0][inp.groups["text"][0]].tolist())
    assert len(set(new)) == len(new) and not prompt & set(new)
    greedy = model.generate(inp, 5, stop_at_eos=False, new_tokens_only=True)[0].tolist()
    assert len(set(greedy)) < len(greedy)  # without the penalty the model repeats itself
    with pytest.raises(ValueError, match="freq_penalty"):
        model.generate(inp, 2, do_sample=True, freq_penalty=-1.0)


@parity("generate(stop_at_eos, eos_token_id)", "differs", "a stopped row is padded with the "
        "pad token as HF does (TL pads with EOS); default stop tokens: the generation config's, "
        "else the tokenizer's EOS")
def test_eos_stops_a_row_and_pads(model):
    inp = image_input(model, 2)
    free = model.generate(inp, 5, stop_at_eos=False, new_tokens_only=True)
    stop = int(free[0, 1])
    out = model.generate(inp, 5, eos_token_id=stop, new_tokens_only=True)
    pad = model.tokenizer.pad_token_id
    for row, free_row in zip(out, free, strict=True):
        hits = (free_row == stop).nonzero().flatten().tolist()
        end = hits[0] + 1 if hits else 5
        assert torch.equal(row[:end], free_row[:end]) and (row[end:] == pad).all()
    assert torch.equal(model.generate(inp, 5, eos_token_id=stop, stop_at_eos=False,
                                      new_tokens_only=True), free)


@parity("generate(past_kv_cache=TransformerLensKeyValueCache)", "works", "TL's cache object "
        "(init_cache(model.cfg, ...)) or ours; an unfrozen one is filled with the prompt's and "
        "new tokens' post-RoPE keys/values [batch, pos, kv_head, d_head] and continues")
def test_generate_with_tl_and_our_kv_cache(model):
    inp = image_input(model)
    p, n = inp.shape[1], 4
    whole = model.generate(inp, 2 * n, stop_at_eos=False, new_tokens_only=True)
    tl = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    first = model.generate(inp, n, stop_at_eos=False, new_tokens_only=True, past_kv_cache=tl)
    assert torch.equal(first, whole[:, :n])
    kv_heads = model.cfg.n_key_value_heads
    assert tl.entries[0].past_keys.shape == (1, p + n - 1, kv_heads, model.cfg.d_head)
    # the last token was sampled but not yet run: continue from it
    rest = model.generate(first[:, -1:], n, stop_at_eos=False, new_tokens_only=True,
                          past_kv_cache=tl)
    assert torch.equal(rest, whole[:, n:])
    assert tl.previous_attention_mask.shape == (1, p + 2 * n - 1)
    # ours: a frozen prefix cache after the image, the rest of the prompt as input
    cut = int(inp.positions("image").max()) + 1
    cache = model.run_prefix(inp, cut)
    suffix = model.generate(inp.input_ids[:, cut:], 2 * n, stop_at_eos=False,
                            new_tokens_only=True, past_kv_cache=cache)
    assert torch.equal(suffix, whole) and cache.length == cut  # left frozen


def check_return_cache(model, inp, n=3):
    out, cache = model.generate(inp, n, stop_at_eos=False, output_logits=True, return_cache=True)
    p = inp.shape[1]
    last = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    assert last.shape[:2] == (len(inp), p + n)
    logits = model.unembed(model.ln_final(last))
    for i in range(n):  # the cached run's logits are the ones generation sampled from
        assert (logits[:, p - 1 + i] - out.logits[i]).abs().max() <= 1e-4
    placed = cache["hook_image_embeds"]  # batch-first: zero outside the image positions
    assert placed.shape[:2] == (len(inp), p + n)
    assert torch.equal(placed[:, :p].abs().sum(-1) > 0, inp.groups["image"])
    assert not placed[:, p:].any()


@parity("generate(return_cache=True)", "works", "also for image inputs and batches, which TL's "
        "bridge refuses: the ActivationCache of the whole output, images included")
def test_return_cache_with_image_input(model):
    check_return_cache(model, image_input(model, 2))
    with pytest.raises(ValueError, match="return_cache"):
        model.generate(model.embed_input(image_input(model)), 2, return_cache=True)


def test_return_cache_mrope(tiny_checkpoint):
    """M-RoPE (Qwen2-VL): the new tokens' positions continue after the image's."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen2-vl"))
    inp = model.prepare([noise_image(20, 28, 1), noise_image(30, 14, 2)], PROMPTS)
    check_return_cache(model, inp)


@parity("generate greedy = HF generate", "works", "token for token on every tiny family, "
        "images, left padding and an EOS that stops one row included")
@pytest.mark.parametrize("kind", FAMILIES)
def test_greedy_with_eos_equals_hf(tiny_checkpoint, kind):
    folder = tiny_checkpoint(kind)
    model = HookedLVLM.from_pretrained(folder)
    reference = type(model.hf_model).from_pretrained(folder, attn_implementation="eager").eval()
    inp = model.prepare([noise_image(20, 28, 1), noise_image(30, 14, 2)], PROMPTS)
    free = model.generate(inp, 5, stop_at_eos=False, new_tokens_only=True)
    stop = int(free[0, 1])
    with torch.no_grad():
        theirs = reference.generate(**hf_kwargs(model, inp), max_new_tokens=5, do_sample=False,
                                    eos_token_id=stop, pad_token_id=model.tokenizer.pad_token_id)
    ours = model.generate(inp, 5, eos_token_id=stop)
    assert torch.equal(ours, theirs)
