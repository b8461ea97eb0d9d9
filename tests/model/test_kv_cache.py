"""KV caches against full runs: several cached examples with different left padding, each
continued by several suffixes, and absolute positions (which a single forward cannot reveal:
RoPE only sees relative offsets)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lvlm_lens import HookedLVLM
from tests.helpers import noise_image

# Texts before the image differ in length, so the cached prefixes carry different left padding.
PREFIXES = ["USER: <image>", "you are a helpful assistant . USER: <image>"]
SUFFIXES = [
    "\nwhat is this ? ASSISTANT:",
    "\ndescribe the main object in one word please ? ASSISTANT:",
    "\nwhat color is it ? ASSISTANT:",
]
KINDS = ["llava-llama", "llava-onevision-qwen2"]  # multi-head; grouped-query (2 query heads per KV)


@pytest.fixture(scope="module", params=KINDS)
def model(request, tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint(request.param))


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask


def test_shared_prefix_with_several_cached_examples_equals_full_runs(model):
    """B_kv = 2 cached examples (different left padding, different images), r = 3 suffixes each
    (B_q = 6, rows example-major, the suffix batch itself left-padded): every row equals the
    full run of its own prefix + suffix."""
    images = [noise_image(20, 28, 1), noise_image(24, 20, 2)]
    cached = model.prepare(images, PREFIXES)
    pads = (cached.attention_mask == 0).sum(-1)
    assert pads.unique().numel() == 2  # the cached examples are padded differently
    cache = model.run_prefix(cached)
    rows, expected = [], []
    for i, (image, prefix) in enumerate(zip(images, PREFIXES, strict=True)):
        n = int(cached.attention_mask[i].sum())
        for suffix in SUFFIXES:
            whole = model.prepare(image, prefix + suffix)
            assert torch.equal(whole.input_ids[0, :n], cached.input_ids[i, -n:])
            rows.append(whole.input_ids[0, n:])
            expected.append(model(whole)[0, n:])
    assert len({len(r) for r in rows}) > 1  # the suffix batch is padded too
    ids, mask = left_pad(rows, model.tokenizer.pad_token_id)
    out = model(ids, past_kv_cache=cache, attention_mask=mask)
    assert out.shape[0] == cache.batch_size * len(SUFFIXES)
    for r, (row, ref) in enumerate(zip(rows, expected, strict=True)):
        assert (out[r, -len(row) :] - ref).abs().max() <= 1e-4, f"row {r}"
    # not vacuous: the same suffix after the two prefixes gives different logits
    assert (expected[0][-1] - expected[len(SUFFIXES)][-1]).abs().max() > 1e-3
    assert cache.keys[0].shape[2] == cached.shape[1]  # the frozen cache was not extended


def test_cached_continuation_of_a_left_padded_batch_equals_full_run(model):
    """Tokens appended through an unfrozen cache (as ``generate`` does) see the same logits as a
    full run of the longer sequence: the new tokens' positions count only real prefix tokens."""
    images = [noise_image(20, 28, 1), noise_image(24, 20, 2)]
    inp = model.prepare(images, [PREFIXES[0] + SUFFIXES[0], PREFIXES[1] + SUFFIXES[1]])
    assert (inp.attention_mask == 0).any()
    new = torch.tensor([[model.to_single_token("star"), model.to_single_token("red")],
                        [model.to_single_token("cat"), model.to_single_token("dog")]])  # fmt: skip
    cache = model.run_prefix(inp, frozen=False)
    steps = [model(new[:, j : j + 1], past_kv_cache=cache)[:, -1] for j in range(2)]
    longer = replace(
        inp,
        input_ids=torch.cat([inp.input_ids, new], 1),
        attention_mask=torch.cat([inp.attention_mask, torch.ones_like(new)], 1),
        groups={},
    )
    full = model(longer)
    for j in range(2):
        assert (steps[j] - full[:, inp.shape[1] + j]).abs().max() <= 1e-4
    assert cache.length == inp.shape[1] + 2  # extended in place


def rotated_keys(model, inp, past_kv_cache=None) -> dict[int, torch.Tensor]:
    """``blocks.{l}.attn.hook_rot_k`` of every layer: the keys after RoPE, ``[b, pos, kv, d]``."""
    store = {}

    def save(t, hook):
        store[int(hook.name.split(".")[1])] = t.detach().clone()

    hooks = [(f"blocks.{i}.attn.hook_rot_k", save) for i in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        model(inp, past_kv_cache=past_kv_cache)
    assert len(store) == model.cfg.n_layers
    return store


def test_positions_under_left_padding_are_absolute(model):
    """RoPE keys at each real token equal those of the same example run alone, unpadded: the
    padded example's first real token is at position 0, not at its column. A suffix run from a
    cached prefix continues counting from the prefix's real length."""
    images = [noise_image(20, 28, 1), noise_image(20, 28, 2)]  # same image-token count
    prompts = [PREFIXES[1] + SUFFIXES[1], PREFIXES[0] + SUFFIXES[0]]
    batch = model.prepare(images, prompts)
    pad = int((batch.attention_mask[1] == 0).sum())
    assert pad > 0 and bool(batch.attention_mask[0].all())
    alone = model.prepare(images[1], prompts[1])
    padded_k, alone_k = rotated_keys(model, batch), rotated_keys(model, alone)
    for layer in range(model.cfg.n_layers):
        diff = padded_k[layer][1, pad:] - alone_k[layer][0]
        assert diff.abs().max() <= 1e-4, f"layer {layer}"
    # the suffix after a padded cached prefix: positions continue from the real prefix length
    n_prefix = int(model.prepare(images[1], PREFIXES[0]).input_ids.shape[1])
    cache = model.run_prefix(model.prepare(images[::-1], [PREFIXES[0], PREFIXES[1]]))
    suffix_ids = alone.input_ids[:, n_prefix:].expand(2, -1)
    assert cache.attention_mask[0].eq(0).any()  # example 0's cached prefix is left-padded
    suffix_k = rotated_keys(model, suffix_ids, past_kv_cache=cache)
    for layer in range(model.cfg.n_layers):
        diff = suffix_k[layer][0] - alone_k[layer][0, n_prefix:]
        assert diff.abs().max() <= 1e-4, f"layer {layer}"
