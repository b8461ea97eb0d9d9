"""Llama 4: its decoder features against HF eager and by known answers (sigmoid-routed MoE
on the expert input with a shared expert, chunked local attention, NoPE layers with
temperature tuning, pairwise RoPE with q/k L2 norms after it)."""

from __future__ import annotations

import math

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.interventions.knockout import knockout_effect, knockout_hooks, window_layers
from lvlm_lens.interventions.sweeps import knockout_window_sweep
from lvlm_lens.model.blocks import GatedMLP
from lvlm_lens.model.families.llama4 import (
    Llama4ImageProcessor,
    best_fit,
    fit_without_distortion,
    llama4_image_string,
    supported_resolutions,
)
from lvlm_lens.model.moe import SparseMoE
from lvlm_lens.testing.tiny_llama4 import CHUNK, TOKENS_PER_TILE, TOP_K
from tests.helpers import PROMPTS, noise_image

LONG = "USER: what is the main object in this image and what is this ? ASSISTANT:"


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("llama4"))


def _hf(model, inp):
    with torch.no_grad():
        return model.hf_model(**inp.to_hf()).logits


def test_text_and_one_image_match_hf(model):
    text = model.prepare(None, LONG)
    assert text.shape[1] > 2 * CHUNK  # three chunks
    image = model.prepare([noise_image(30, 60, 1)], PROMPTS[0])
    assert int(image.image_tiles[0]) == 3  # 1x2 tiles and the global one
    for inp in (text, image):
        with torch.no_grad():
            assert (model(inp) - _hf(model, inp)).abs().max() <= 1e-4


def test_chunked_layers_see_only_their_chunk(model):
    spec = model.cfg.decoder
    assert spec.chunked_layers == (0, 1, 2) and spec.no_rope_layers == (3,)
    inp = model.prepare(None, LONG)
    _, cache = model.run_with_cache(inp, names_filter=lambda n: n.endswith("hook_pattern"))
    pos = torch.arange(inp.shape[1])
    other = (pos[:, None] // CHUNK) != (pos[None, :] // CHUNK)
    for layer in range(4):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # [head, q, k]
        outside = pattern[:, other].abs().max()
        if layer in spec.chunked_layers:
            assert outside == 0
        else:  # the NoPE layer attends over the whole prompt
            assert outside > 1e-3


def test_moe_hooks_route_and_sum(model):
    assert [isinstance(b.mlp, SparseMoE) for b in model.blocks] == [False, True, False, True]
    assert isinstance(model.blocks[0].mlp, GatedMLP)
    inp = model.prepare([noise_image(20, 28, 1)], PROMPTS[1])
    _, cache = model.run_with_cache(inp)
    mlp = model.blocks[1].mlp
    x = cache["blocks.1.ln2.hook_normalized"]
    logits = cache["blocks.1.mlp.hook_router_logits"]
    assert torch.allclose(logits, x @ mlp.W_router, atol=1e-5)
    assert torch.allclose(cache["blocks.1.mlp.hook_expert_weights"], torch.sigmoid(logits))
    index = cache["blocks.1.mlp.hook_expert_indices"]
    assert index.shape[-1] == TOP_K
    assert torch.equal(index, logits.topk(TOP_K, dim=-1).indices)
    # expert e on the input scaled by its score, by hand from the TL-shaped weights
    e, w = index[0, -1, 0], torch.sigmoid(logits[0, -1, index[0, -1, 0]])
    xe = x[0, -1] * w
    by_hand = (torch.nn.functional.silu(xe @ mlp.W_gate[e]) * (xe @ mlp.W_in[e])) @ mlp.W_out[e]
    assert torch.allclose(cache["blocks.1.mlp.hook_expert_out"][0, -1, 0], by_hand, atol=1e-5)
    total = cache["blocks.1.mlp.hook_expert_out"].sum(2) + cache["blocks.1.mlp.hook_shared_out"]
    assert torch.allclose(total, cache["blocks.1.hook_mlp_out"], atol=1e-5)
    assert not hasattr(mlp, "hook_shared_gate")  # Llama 4's shared expert is ungated


def test_qk_l2_norm_on_rope_layers_only(model):
    inp = model.prepare(None, LONG)
    _, cache = model.run_with_cache(inp)
    for layer in range(4):
        q = cache[f"blocks.{layer}.attn.hook_rot_q"]
        rms = q.pow(2).mean(-1).sqrt()
        if layer in model.cfg.decoder.no_rope_layers:  # no RoPE, no norm: q as projected
            assert torch.equal(q, cache[f"blocks.{layer}.attn.hook_q"])
        else:
            assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4)


def test_attention_temperature_matches_hf_and_its_formula(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llama4", floor_scale=4, attn_scale=0.5))
    assert model.cfg.decoder.attn_temperature == (4, 0.5)
    inp = model.prepare(None, LONG)  # unpadded: HF's column index is the position
    with torch.no_grad():
        assert (model(inp) - _hf(model, inp)).abs().max() <= 1e-4
    _, cache = model.run_with_cache(inp)
    pos = torch.arange(inp.shape[1]).float()
    scale = 1 + 0.5 * torch.log1p(torch.floor((pos + 1) / 4))
    assert scale[-1] > 1.5
    q = cache["blocks.3.attn.hook_q"] * scale[None, :, None, None]
    assert torch.allclose(cache["blocks.3.attn.hook_rot_q"], q, atol=1e-6)
    # a left-padded row keeps its own positions (HF's batched run counts the padding)
    short = model.prepare(None, "USER: what is this ? ASSISTANT:")
    batch = model.prepare(None, [LONG, "USER: what is this ? ASSISTANT:"])
    with torch.no_grad():
        alone, padded = model(short)[0, -1], model(batch)[1, -1]
    assert (alone - padded).abs().max() <= 1e-4
    assert math.isclose(float(scale[3]), 1 + 0.5 * math.log(2), rel_tol=1e-6)


# tiles and their text ------------------------------------------------------------------------
@pytest.mark.parametrize("aspect", [(1, 1), (1, 2), (2, 1), (2, 2), (1, 4), (3, 1)])
def test_image_string_is_hfs_prompt_split_image(aspect):
    from transformers.models.llama4.processing_llama4 import Llama4Processor

    for n in (1, 4, 144):
        hf = Llama4Processor._prompt_split_image(None, aspect, n)  # reads nothing of self
        assert llama4_image_string(aspect, n, "<|patch|>") == hf


def test_tiling_known_answers():
    # HF's docstring examples of its helpers
    assert supported_resolutions(4, 224)[:3] == [(224, 896), (448, 448), (224, 224)]
    assert set(supported_resolutions(5, 224)) == {
        (224, 896), (448, 448), (224, 224), (896, 224), (224, 672), (672, 224), (224, 448),
        (448, 224), (224, 1120), (1120, 224)}  # fmt: skip
    options = [(224, 672), (672, 224), (224, 448), (448, 224), (224, 224)]
    assert best_fit((200, 300), options) == (224, 448)
    assert fit_without_distortion((200, 300), (450, 200)) == (133, 200)  # floor(200 * 2/3)
    assert fit_without_distortion((800, 600), (450, 1300)) == (450, 337)
    proc = Llama4ImageProcessor(size={"height": 28, "width": 28}, max_patches=4)
    pixels, grid = proc.tiles(noise_image(30, 60, 1))  # 30x60 -> a 28x56 canvas: 1x2 tiles
    assert grid == (1, 2) and pixels.shape == (3, 3, 28, 28)  # two tiles + the global one
    small, grid = proc.tiles(noise_image(10, 12, 2))  # smaller than a tile: fitted to one,
    assert grid == (1, 1) and small.shape == (1, 3, 28, 28)  # 10x12 -> 23x28, padded below
    assert (small[0, :, 23:] == -1).all() and not (small[0, :, 22] == -1).all()


def test_batch_of_different_sizes_is_hfs_expansion(tiny_checkpoint):
    from transformers.models.llama4.processing_llama4 import Llama4Processor

    model = HookedLVLM.from_pretrained(tiny_checkpoint("llama4", chat_template=True))
    images = [noise_image(30, 60, 1), noise_image(60, 60, 2)]  # 1x2 and 2x2 tiles
    prompts = ["what is this ?", "what is the main object ?"]
    inp = model.prepare(images, prompts, template="chat")
    assert inp.image_tiles.tolist() == [3, 5]
    tok = model.tokenizer
    for i, (im, prompt) in enumerate(zip(images, prompts, strict=True)):
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        _, grid = model.image_processor.tiles(im)
        image = Llama4Processor._prompt_split_image(None, grid, TOKENS_PER_TILE)
        expected = tok(text.replace("<|image|>", image, 1), add_special_tokens=False).input_ids
        real = inp.attention_mask[i].bool()
        assert inp.input_ids[i][real].tolist() == expected
    assert inp.attention_mask[0, 0] == 0  # left-padded: the first has fewer tiles
    with torch.no_grad():
        ours, hf = model(inp), _hf(model, inp)
    real = inp.attention_mask.bool()
    assert (ours - hf)[real].abs().max() <= 1e-4
    coords = model.to_str_tokens(inp, 1)
    assert coords.count("<img 1:0,0>") == 1 and coords.count("<img 0:1,1>") == 1  # tile 1, global


# refusals -----------------------------------------------------------------------------------
def test_processor_refusals(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text('{"do_resize": false}')
    with pytest.raises(ValueError, match="do_resize=False is not supported"):
        Llama4ImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="size must be square"):
        Llama4ImageProcessor(size={"height": 28, "width": 56})


def test_text_only_llama4_is_refused_clearly(tiny_checkpoint):
    from lvlm_lens.model.families import check_supported

    config = HookedLVLM.from_pretrained(tiny_checkpoint("llama4")).hf_model.config
    with pytest.raises(ValueError, match="unsupported architecture 'llama4_text'"):
        check_supported(config.text_config)


def test_top1_routing_and_temperature_generate_as_hf(tiny_checkpoint):
    """The real checkpoints' one expert per token; greedy generation past a chunk boundary with
    the temperature switched on (one unpadded row: HF's column index is the position)."""
    folder = tiny_checkpoint("llama4", num_experts_per_tok=1, floor_scale=4)
    model = HookedLVLM.from_pretrained(folder)
    inp = model.prepare([noise_image(30, 60, 1)], PROMPTS[1])
    with torch.no_grad():
        assert (model(inp) - _hf(model, inp)).abs().max() <= 1e-4
        theirs = model.hf_model.generate(**inp.to_hf(generate=True), max_new_tokens=CHUNK + 2,
                                         do_sample=False, eos_token_id=None,
                                         pad_token_id=model.tokenizer.pad_token_id)  # fmt: skip
    ours = model.generate(inp, max_new_tokens=CHUNK + 2, eos_token_id=[])
    assert torch.equal(ours, theirs)


def _chunk_knockout_batch(model):
    """A left-padded text batch of two, and per example the real offset of its first token."""
    short = "USER: what is the main object in this image and what ? ASSISTANT:"
    inp = model.prepare(None, [LONG, short])
    pad = (inp.attention_mask == 0).sum(-1).tolist()
    assert pad[0] == 0 < pad[1] and inp.shape[1] - pad[1] >= 2 * CHUNK  # two whole chunks
    return inp, pad


def _at(inp, pad, real):
    """A ``[batch, pos]`` group holding real positions ``real`` of each example."""
    group = torch.zeros(inp.shape, dtype=torch.bool)
    for i, p in enumerate(pad):
        group[i, [p + r for r in real]] = True
    return group


@torch.no_grad()
def _hf_knocked(model, inp, source, target, layers=range(4)):
    """HF logits with each decoder layer's own mask (chunked or full, as HF builds it) and, in
    ``layers``, the knocked-out edges blocked on top."""
    blocked = (target[:, :, None] & source[:, None, :])[:, None]

    def swap(module, args, kwargs):
        mask = kwargs["attention_mask"]
        assert mask.shape[-2:] == blocked.shape[-2:]
        off = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
        return args, {**kwargs, "attention_mask": mask.masked_fill(blocked, off)}

    decoder = model.hf_model.language_model.model.layers
    handles = [decoder[la].register_forward_pre_hook(swap, with_kwargs=True) for la in layers]
    try:
        return model.hf_model(**inp.to_hf()).logits
    finally:
        for h in handles:
            h.remove()


def test_knockout_under_chunked_attention_matches_hf(model):
    """Knocking the first token of the second chunk out of the rest of that chunk: in the
    chunked layers those queries keep the later keys of their chunk (and themselves), in the
    NoPE layer everything before; the logits are HF's with each layer's own mask and the same
    edges blocked, finite."""
    inp, pad = _chunk_knockout_batch(model)
    source = _at(inp, pad, [CHUNK])
    target = _at(inp, pad, range(CHUNK + 1, 2 * CHUNK))
    with model.hooks(fwd_hooks=knockout_hooks(model, inp, source, target, range(4))):
        ours = model(inp)
    clean, want = model(inp), _hf_knocked(model, inp, source, target)
    assert torch.isfinite(ours).all()
    assert (ours - want).abs().max() <= 1e-4
    assert (ours - clean).abs().max() > 1e-3  # the knockout does something


def test_knockout_leaving_a_chunk_start_with_no_key_is_refused(model):
    """A query at the start of a chunk sees only itself in a chunked layer: knocking it out of
    itself leaves it no key there (though it has the keys of the chunk before in the full
    NoPE layer), so that is refused naming the layer, and the same knockout in the NoPE layer
    alone is HF's with that mask."""
    inp, pad = _chunk_knockout_batch(model)
    start = _at(inp, pad, [CHUNK])
    with pytest.raises(ValueError, match=r"no key left to attend to in layer\(s\) \[0\]"):
        knockout_hooks(model, inp, start, start, [0, 3])
    with model.hooks(fwd_hooks=knockout_hooks(model, inp, start, start, [3])):
        ours = model(inp)
    want = _hf_knocked(model, inp, start, start, layers=[3])
    assert torch.isfinite(ours).all() and (ours - want).abs().max() <= 1e-4
    assert (ours - model(inp)).abs().max() > 1e-3


def test_knockout_sweep_from_a_prefix_inside_a_chunk_is_the_full_run(model):
    """The window sweep recomputes from the first target query on, which lies inside the
    second chunk: its chunked layers still see that chunk's earlier (cached) keys, so each
    window's effect is :func:`knockout_effect`'s on the full input."""
    inp, pad = _chunk_knockout_batch(model)
    inp = model.prepare(None, inp.texts, answers=["star", "circle"])
    source = _at(inp, pad, [CHUNK, CHUNK + 1])
    target = _at(inp, pad, range(CHUNK + 2, 2 * CHUNK))
    sweep = knockout_window_sweep(model, inp, source, target, window=2, metric="logit",
                                  progress=False)  # fmt: skip
    want = torch.stack([knockout_effect(model, inp, source, target, window_layers(c, 2, 4),
                                        metric="logit") for c in range(4)])  # fmt: skip
    assert torch.isfinite(sweep).all() and want.abs().max() > 1e-4
    torch.testing.assert_close(sweep, want, atol=1e-4, rtol=0)
