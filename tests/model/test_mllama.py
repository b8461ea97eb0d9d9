"""Llama 3.2 Vision: the image enters only through gated cross-attention layers.

Tokens, pixel values and the cross-attention mask = HF ``MllamaProcessor`` per example; logits =
HF eager (fp32) on a left-padded batch of two images of different tile counts, per example and
text-only; the cross-attention hooks against the formula they stand for; the gates; the token
before the image attends uniformly (HF's mask); ``decompose_resid`` sums to the final residual;
the processor's tile rule on several images; the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformer_lens import patching as tl_patching
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformers import AutoProcessor
from transformers.models.mllama.processing_mllama import (
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.interventions import (
    AblationEngine,
    BaselineKV,
    HeadAblation,
    ablate_heads,
    compute_baseline,
    knockout,
    knockout_effect,
    knockout_window_sweep,
    run_reference,
    window_layers,
)
from lvlm_lens.interventions.metrics import answer_logprob
from lvlm_lens.interventions.sweeps import patch_sweep
from lvlm_lens.model.attention import Attention
from lvlm_lens.model.cross_attention import CrossAttention
from lvlm_lens.model.families.mllama import cross_attention_tiles
from lvlm_lens.model.generate import extend_input
from lvlm_lens.testing.tiny_mllama import CROSS_LAYERS, MAX_TILES
from tests.helpers import PROMPTS, hf_kwargs, hf_logits, noise_image

#: One tile and three tiles (1 x 3): different tile counts.
IMAGES = [noise_image(16, 16, 1), noise_image(20, 50, 2)]


@pytest.fixture(scope="module")
def pair(tiny_checkpoint):
    folder = tiny_checkpoint("mllama")
    model = HookedLVLM.from_pretrained(folder)
    reference = type(model.hf_model).from_pretrained(folder, attn_implementation="eager").eval()
    return model, reference, AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def inp(pair):
    return pair[0].prepare(IMAGES, PROMPTS)


def test_layer_kinds_follow_the_config(pair):
    model, reference, _ = pair
    assert reference.config.text_config.cross_attention_layers == CROSS_LAYERS
    assert model.cfg.decoder.cross_attention.layers == tuple(CROSS_LAYERS)
    for layer, block in enumerate(model.blocks):
        if layer in CROSS_LAYERS:
            assert type(block.cross_attn) is CrossAttention and block.attn is block.cross_attn
        else:
            assert type(block.attn) is Attention and not hasattr(block, "cross_attn")


def test_tl_weights_are_hf_s_for_self_and_cross_layers(pair):
    """``model.W_Q[l]`` ... stack each layer's attention weights, a cross-attention layer's
    its cross-attention's (the one module, also ``blocks[l].attn``)."""
    model, reference, _ = pair
    cfg, hf_layers = model.cfg, reference.model.language_model.layers
    h, d, g = cfg.n_heads, cfg.d_head, cfg.n_groups
    by_head = lambda w: w.view(-1, d, w.shape[-1]).transpose(1, 2)  # noqa: E731
    cross = CROSS_LAYERS[0]
    plain = next(la for la in range(cfg.n_layers) if la not in CROSS_LAYERS)
    for layer, name in ((plain, "self_attn"), (cross, "cross_attn")):
        hf = getattr(hf_layers[layer], name)
        assert torch.equal(model.W_Q[layer], by_head(hf.q_proj.weight))
        k, v = by_head(hf.k_proj.weight), by_head(hf.v_proj.weight)
        assert torch.equal(model._W_K[layer], k) and torch.equal(model._W_V[layer], v)
        assert torch.equal(model.W_K[layer], k.repeat_interleave(g, 0))
        assert torch.equal(model.W_V[layer], v.repeat_interleave(g, 0))
        w_o = hf.o_proj.weight.T.reshape(h, d, cfg.d_model)
        assert torch.equal(model.W_O[layer], w_o)
        for b in (model.b_Q, model.b_K, model.b_V, model.b_O):  # Llama: no attention bias
            assert torch.equal(b[layer], torch.zeros_like(b[layer]))
    assert not torch.equal(model.W_Q[cross], model.W_Q[plain])
    # code written against TransformerLens' blocks[l].attn runs on every layer
    norms = [block.attn.OV.norm() for block in model.blocks]
    assert torch.allclose(torch.stack(norms), model.OV.norm())
    params = model.tl_parameters()
    assert torch.equal(params[f"blocks.{cross}.attn.W_Q"], model.W_Q[cross])


def test_inputs_are_the_hf_processor_s_per_example(pair, inp):
    model, _, processor = pair
    assert inp.image_extra["num_tiles"].tolist() == [1, 3]
    for i, (image, prompt) in enumerate(zip(IMAGES, PROMPTS, strict=True)):
        text = prompt.replace("<image>", "<|image|>")
        ref = processor(images=[[image]], text=[text], return_tensors="pt")
        kw = inp.select(i).to_hf()
        assert kw["input_ids"].tolist() == ref["input_ids"].tolist()
        for key in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask",
                    "cross_attention_mask"):  # fmt: skip
            assert torch.equal(kw[key], torch.as_tensor(ref[key])), key


def test_str_tokens_show_the_image_token_once(pair, inp):
    model, _, _ = pair
    tokens = model.to_str_tokens(inp, 1)
    assert tokens.count("<|image|>") == 1 and tokens[:2] == ["<s>", "<s>"]  # HF's two BOS


def test_tile_rule_is_the_processor_s_on_several_images():
    """Images apart, images side by side (read together) and an example with fewer images."""
    img, max_tiles = 9, MAX_TILES
    rows = [[1, img, 5, 6, img, 7, img, img, 8, 3], [0, 0, 1, 2, img, 5, 6, 7, 8, 3]]
    tiles = [[2, 1, 4, 3], [3, 0, 0, 0]]
    sparse = [get_cross_attention_token_mask(r, img) for r in rows]
    want = convert_sparse_cross_attention_mask_to_dense(
        sparse, [t[: len(s)] for t, s in zip(tiles, sparse, strict=True)], max_tiles, len(rows[0])
    )
    got = cross_attention_tiles(torch.tensor(rows), img, tiles, max_tiles)
    assert np.array_equal(got.long().numpy(), want)
    assert got[0, 6:, 2].any() and got[0, 6:, 3].any()  # side by side: both read to the end


@torch.no_grad()
def test_logits_match_hf_on_a_padded_batch_and_per_example(pair, inp):
    model, reference, _ = pair
    assert (inp.attention_mask == 0).any(), "the batch must be padded"
    logits, ref = model(inp), hf_logits(reference, model, inp)
    real = inp.attention_mask.bool()
    assert (logits - ref)[real].abs().max() <= 1e-4
    assert ref[real].std() > 0.1
    for i in range(len(inp)):  # HF's padded batch = its single examples here
        one = inp.select(i)
        assert (model(one) - hf_logits(reference, model, one)).abs().max() <= 1e-4
    # the image matters: another image changes the logits
    other = model.prepare([IMAGES[1], IMAGES[0]], PROMPTS)
    assert (model(other) - logits)[real].abs().max() > 1e-3


@torch.no_grad()
def test_text_only_logits_match_hf(pair):
    model, reference, _ = pair
    inp = model.prepare([None, None], ["USER: what is this ? ASSISTANT:", "USER: hello ?"])
    real = inp.attention_mask.bool()
    assert (model(inp) - hf_logits(reference, model, inp))[real].abs().max() <= 1e-4


@torch.no_grad()
def test_hook_embed_is_hf_s_token_embedding(pair, inp):
    """The ``<|image|>`` token (past the logits, inside the table) is embedded as a token."""
    model, reference, _ = pair
    assert model.cfg.image_token_id >= model.cfg.d_vocab
    _, cache = model.run_with_cache(inp, names_filter="hook_embed")
    table = reference.model.language_model.embed_tokens
    assert torch.equal(cache["hook_embed"], table(inp.input_ids))


@torch.no_grad()
def test_cross_attention_hooks_are_what_they_name(pair, inp):
    model, _, _ = pair
    logits, cache = model.run_with_cache(inp)
    assert torch.equal(logits, model(inp))  # caching changes nothing, bit for bit
    cfg, (b, p) = model.cfg, inp.input_ids.shape
    n_img = 1 * MAX_TILES * model.vision.per_tile
    assert tuple(cache["hook_image_embeds"].shape) == (b, n_img, cfg.d_model)
    for layer in CROSS_LAYERS:
        a, block = f"blocks.{layer}.cross_attn.", model.blocks[layer]
        q, k, v = cache[a + "hook_q"], cache[a + "hook_k"], cache[a + "hook_v"]
        assert tuple(q.shape) == (b, p, cfg.n_heads, cfg.d_head)
        assert tuple(k.shape) == tuple(v.shape) == (b, n_img, cfg.n_key_value_heads, cfg.d_head)
        g = cfg.n_groups
        kh, vh = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, kh) * cfg.d_head**-0.5
        allowed = model.vision.cross_allowed(inp)
        blocked = ~(allowed | ~allowed.any(-1, keepdim=True))[:, None].expand_as(scores)
        got = cache[a + "hook_attn_scores"]
        assert torch.allclose(got[~blocked], scores[~blocked], atol=1e-5)
        pattern = cache[a + "hook_pattern"]
        assert torch.allclose(pattern, scores.masked_fill(blocked, -torch.inf).softmax(-1),
                              atol=1e-6)  # fmt: skip
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, vh)
        assert torch.allclose(cache[a + "hook_z"], z, atol=1e-5)
        # the image token and the tokens after it read only their image's real tiles
        real_tiles = inp.image_extra["num_tiles"].tolist()
        for i, n in enumerate(real_tiles):
            at = int(inp.positions("image", i)[0])
            assert pattern[i, :, at:, : n * model.vision.per_tile].sum(-1).allclose(
                torch.ones(()))
            # the tokens before it read the whole image side, padded tiles too (HF's mask)
            assert (pattern[i, :, :at, n * model.vision.per_tile :] > 0).all()
        gate = cache[f"blocks.{layer}.hook_attn_gate"]
        assert tuple(gate.shape) == (b, p, 1)
        assert torch.allclose(gate, block.attn_gate.tanh()) and gate.abs().min() > 0.01
        out = gate * (torch.einsum("bqhd,hdm->bqm", z, block.cross_attn.W_O))
        assert torch.allclose(cache[f"blocks.{layer}.hook_attn_out"], out, atol=1e-5)
        mlp_gate = cache[f"blocks.{layer}.hook_mlp_gate"]
        assert torch.allclose(mlp_gate, block.mlp_gate.tanh())
        before = ~model.vision.cross_allowed(inp).any(-1)  # no image read: no MLP output
        assert cache[f"blocks.{layer}.hook_mlp_out"][before].abs().max() == 0
        assert cache[f"blocks.{layer}.hook_mlp_out"][~before].abs().max() > 0


@torch.no_grad()
def test_decompose_resid_includes_the_cross_attention_and_sums(pair, inp):
    model, _, _ = pair
    _, cache = model.run_with_cache(inp)
    parts, labels = cache.decompose_resid(return_labels=True)
    resid = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    real = inp.attention_mask.bool()
    assert (parts.sum(0) - resid)[real].abs().max() < 1e-5
    for layer in CROSS_LAYERS:
        part = parts[labels.index(f"{layer}_attn_out")]
        assert torch.equal(part, cache[f"blocks.{layer}.hook_attn_out"])
        assert part[real].abs().max() > 1e-3


@torch.no_grad()
def test_ablating_every_cross_attention_head_makes_the_answer_the_baseline_image_s(pair, inp):
    """Every cross-attention head reading the blank image's K/V (every query) is the run on the
    blank image: the answer no longer depends on the image. Self-attention heads alone do not
    read the image side."""
    model, _, _ = pair
    config = HeadAblation(baseline="blank", scope="all")
    base = compute_baseline(model, inp, config)
    gray = [[Image.new("RGB", (w, h), (128,) * 3)] for h, w in inp.image_sizes.tolist()]
    blank = model(model.prepare(gray, PROMPTS))
    clean = model(inp)
    heads = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    heads[CROSS_LAYERS] = True
    with ablate_heads(model, inp, heads, base, "all"):
        ablated = model(inp)
    real = inp.attention_mask.bool()
    assert (ablated - blank)[real].abs().max() <= 1e-4
    assert (clean - blank)[real].abs().max() > 1e-3
    one = heads.clone()
    one[CROSS_LAYERS[0], 1:] = False  # one head of the first cross layer kept clean
    with ablate_heads(model, inp, one, base, "all"):
        assert (model(inp) - blank)[real].abs().max() > 1e-4


@pytest.mark.parametrize("baseline", ["blank", "zero", "image", "mean"])
@pytest.mark.parametrize("scope", ["text", "all"])
def test_the_engine_is_the_reference_on_cross_attention(pair, inp, baseline, scope):
    """The engine (image-side K/V computed once per example: in the prefix cache under scope
    text, in the cross input under full sequences; the baseline image's side the alternative)
    = the reference hooks, on random masks over self- and cross-attention heads (dense: half
    the heads; sparse: one or two heads, the gathered path), a padded batch."""
    model, _, _ = pair
    config = HeadAblation(baseline=baseline, scope=scope)
    kw = {"image": dict(baseline_image=noise_image(16, 16, 7)),
          "mean": dict(reference_images=[noise_image(16, 16, 8), noise_image(24, 24, 9)])}
    base = compute_baseline(model, inp, config, progress=False, **kw.get(baseline, {}))
    gen = torch.Generator().manual_seed(0)
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    dense = torch.rand(3, *shape, generator=gen) < 0.5
    sparse = torch.zeros(8, *shape, dtype=torch.bool)
    for j, (layer, head) in enumerate([(1, 0), (3, 3), (1, 2), (0, 1), (3, 0), (2, 2)]):
        sparse[j, layer, head] = True
    sparse[6, CROSS_LAYERS[0], 1] = sparse[6, CROSS_LAYERS[1], 2] = True  # row 7: none
    for masks, batch in ((dense, 2), (sparse, 8)):
        ref = run_reference(model, inp, masks, base, config, progress=False)
        out = AblationEngine(model, inp, base, config, batch_size=batch).run(masks,
                                                                             progress=False)
        assert (out - ref).abs().max() <= 1e-4
        assert (ref[:, 1:] - ref[:, :1]).abs().max() > 1e-4  # the masks matter
    assert (ref[:, 0] - ref[:, -1]).abs().max() > 1e-4  # one cross head matters


def _one_example(model, inp, base, i):
    """Example ``i``'s part of a batch's baseline: its sequence columns, and on the cross
    layers the columns of its own images (the batch's first ones)."""
    ex = inp.select(i)
    off, n = inp.shape[1] - ex.shape[1], ex.images_per_example[0] * MAX_TILES
    image = slice(None, n * model.vision.per_tile)
    cols = [image if la in CROSS_LAYERS else slice(off, None) for la in range(len(base.keys))]
    sub = BaselineKV([k[i : i + 1, :, c] for k, c in zip(base.keys, cols, strict=True)],
                     [v[i : i + 1, :, c] for v, c in zip(base.values, cols, strict=True)],
                     base.source[i : i + 1, off:])  # fmt: skip
    return ex, sub


@pytest.mark.parametrize("scope", ["text", "all"])
def test_the_engine_is_the_reference_with_one_and_two_images(pair, scope):
    """Examples with one and two images (the image side of the one-image example is shorter
    than the batch's): each example's cross layers read its own images' baseline. The engine
    runs each example alone, so it is the reference run on each example alone with its part of
    the batch's baseline: in HF's padded batch the tokens before the one-image example's image
    read the whole image side, the other example's second image slot (padding) included, so
    that example's batch logits differ from its own (HF's, too)."""
    model, _, _ = pair
    images = [[IMAGES[0]], [noise_image(20, 20, 3), IMAGES[1]]]
    prompts = [PROMPTS[0], "USER: <image> and <image>\nwhat is this ? ASSISTANT:"]
    inp = model.prepare(images, prompts, answers=["star", "circle"])
    assert inp.images_per_example == [1, 2]
    config = HeadAblation(baseline="image", scope=scope)
    base = compute_baseline(model, inp, config, baseline_image=noise_image(16, 16, 7),
                            progress=False)  # fmt: skip
    masks = sample_masks(12, model.cfg.n_layers, model.cfg.n_heads, rate=0.3, seed=4)
    out = AblationEngine(model, inp, base, config, batch_size=5).run(masks, progress=False)
    for i in range(2):
        ex, sub = _one_example(model, inp, base, i)
        ref = run_reference(model, ex, masks, sub, config, progress=False)[0]
        assert (out[i] - ref).abs().max() <= 1e-4
        assert ref.std() > 1e-3


def _without_cross_attention(model, inp, queries, layers):
    """Logits with the cross-attention output of ``layers`` removed at ``queries``."""

    def cut(out, hook):
        return out.masked_fill(queries[..., None], 0.0)

    hooks = [(f"blocks.{la}.hook_attn_out", cut) for la in layers]
    return model.run_with_hooks(inp, fwd_hooks=hooks)


@torch.no_grad()
def test_knocking_out_text_to_image_cross_edges_removes_the_cross_attention(pair, inp):
    """Every text -> image edge cut in the cross layers = those layers' attention output
    removed at the text tokens (the image token keeps reading its image); one edge (the final
    token, one layer) = that one output removed; self-attention layers cut nothing."""
    model, _, _ = pair
    real = inp.attention_mask.bool()
    clean = model(inp)
    with knockout(model, inp, "image", "text", CROSS_LAYERS):
        cut = model(inp)
    want = _without_cross_attention(model, inp, inp.groups["text"].bool(), CROSS_LAYERS)
    assert (cut - want)[real].abs().max() <= 1e-4
    assert (cut - clean)[real].abs().max() > 1e-3
    layer = CROSS_LAYERS[0]
    with knockout(model, inp, "image", "final", [layer]):
        one = model(inp)
    want = _without_cross_attention(model, inp, inp.groups["final"].bool(), [layer])
    assert (one - want)[real].abs().max() <= 1e-4
    assert (one - clean)[:, -1].abs().max() > 1e-4 and (one - cut)[:, -1].abs().max() > 1e-4
    with knockout(model, inp, "image", "final", [layer], heads=[1]):  # one head: its z is 0
        head = model(inp)
    final = inp.groups["final"].bool()

    def zero_head(z, hook):
        z[:, :, 1] = z[:, :, 1].masked_fill(final[..., None], 0.0)
        return z

    want = model.run_with_hooks(inp, fwd_hooks=[(f"blocks.{layer}.cross_attn.hook_z", zero_head)])
    assert (head - want)[real].abs().max() <= 1e-4 and (head - one)[:, -1].abs().max() > 1e-4
    plain = [la for la in range(model.cfg.n_layers) if la not in CROSS_LAYERS]
    with knockout(model, inp, "question", "final", CROSS_LAYERS):  # no image token: no edge
        assert (model(inp) - clean)[real].abs().max() <= 1e-5  # (materialised, not fused)
    with knockout(model, inp, "image", "text", plain):  # the image token's key in self layers
        assert (model(inp) - clean)[real].abs().max() > 1e-4


@torch.no_grad()
def test_knockout_sweep_is_the_reference_on_cross_attention(pair):
    model, _, _ = pair
    inp = model.prepare(IMAGES, PROMPTS, answers=["star", "circle"])
    n = model.cfg.n_layers
    sweep = knockout_window_sweep(model, inp, "image", "final", window=2, metric="logit",
                                  progress=False)  # fmt: skip
    for centre in range(n):
        ref = knockout_effect(model, inp, "image", "final", window_layers(centre, 2, n),
                              metric="logit")  # fmt: skip
        assert (sweep[centre] - ref).abs().max() <= 1e-5
    assert sweep.abs().max() > 1e-4


@torch.no_grad()
def test_tl_attn_names_of_a_cross_layer_are_its_cross_attn_hooks(pair, inp):
    """TransformerLens' ``blocks.{l}.attn.hook_*`` of a cross-attention layer, by name or by
    a filter function, in hooks and in cache filters, is its ``cross_attn.hook_*``; a point the
    layer lacks is refused in one line; derived caches keep the lookup."""
    model, _, _ = pair
    layer = CROSS_LAYERS[0]
    tl, ours = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.cross_attn.hook_z"

    def zero(z, hook):
        return z * 0

    want = model.run_with_hooks(inp, fwd_hooks=[(ours, zero)])
    assert (want - model(inp)).abs().max() > 1e-3
    for name in (tl, lambda n: n == tl):
        assert torch.equal(model.run_with_hooks(inp, fwd_hooks=[(name, zero)]), want)
        with model.hooks(fwd_hooks=[(name, zero)]):
            assert torch.equal(model(inp), want)
    full = model.run_with_cache(inp)[1]
    for names in (tl, [tl, "hook_embed"], (tl,), lambda n: n == tl):
        _, cache = model.run_with_cache(inp, names_filter=names)
        assert ours in cache.cache_dict and torch.equal(cache[tl], full[ours])
        assert torch.equal(cache["z", layer], full[ours])
    missing = f"blocks.{layer}.attn.hook_rot_k"  # no rotary on the image side
    for run in (lambda: model.run_with_hooks(inp, fwd_hooks=[(missing, zero)]),
                lambda: model.run_with_cache(inp, names_filter=[missing])):  # fmt: skip
        with pytest.raises(ValueError, match=r"cross-attention layer, which has no hook_rot_k"):
            run()
    sliced = full.apply_slice_to_batch_dim(1)
    assert torch.equal(sliced[tl], full[ours][1]) and torch.equal(sliced["z", layer], full[ours][1])
    assert torch.equal(full.to("cpu")[tl], full[ours])
    one = model.run_with_cache(inp.select(0))[1]
    z = one[ours][0]
    assert torch.equal(one.remove_batch_dim()[tl], z)
    # a text-only run skips the layer: TL's name says why it is missing, in one line
    text = model.run_with_cache(model.to_tokens("what is this ?"))[1]
    with pytest.raises(KeyError, match=f"whose hook is {ours}, not in this cache") as err:
        text["z", layer]
    assert "\n" not in str(err.value)
    # the image side has no position axis: pos_slice leaves it whole
    cut = model.run_with_cache(inp, pos_slice=-1)[1]
    for name in ("hook_image_embeds", f"blocks.{layer}.cross_attn.hook_k"):
        assert torch.equal(cut[name], full[name])
    assert torch.equal(cut[ours], full[ours][:, -1:])
    # the cross layer's input is never split per head; its MLP input fires with the switch
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        with pytest.raises(ValueError, match="not a hook point .* cross-"):
            model.run_with_hooks(inp, fwd_hooks=[(f"blocks.{layer}.hook_q_input", zero)])
        cache = model.run_with_cache(inp)[1]
        assert torch.equal(cache[f"blocks.{layer}.hook_mlp_in"],
                           cache[f"blocks.{layer}.hook_resid_mid"])  # fmt: skip
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)


SEVERAL = (["USER: <image> and <image>\nwhat is this ? ASSISTANT:",
            "USER: what is <image> this ? ASSISTANT:", "USER: what is this ? ASSISTANT:"],
           [[IMAGES[0], noise_image(40, 24, 3)], IMAGES[1], None])


def _greedy_by_hand(model, inp, n):
    """Greedy continuation by full forwards over the growing input, no cache: each new token
    reads the image side by the processor's tile rule on the grown sequence."""
    new = inp.input_ids.new_zeros(len(inp), 0)
    for _ in range(n):
        logits = model(extend_input(inp, new, torch.ones_like(new)))
        new = torch.cat([new, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return torch.cat([inp.input_ids, new], 1)


@pytest.mark.parametrize("which", ["padded pair", "several images, a text-only row", "text"])
def test_cached_generate_is_hf_s_and_the_uncached_one(pair, which):
    """Generate with a KV cache (the cross layers' image K/V computed once, each new token
    reading what the prompt's last token reads) = HF ``generate`` token for token = greedy by
    full forwards; on two images of different tile counts (left-padded), on two images, one
    image and a text-only row, and on text alone (no image: the cross layers add nothing)."""
    model, reference, _ = pair
    prompts, images = {"padded pair": (PROMPTS, IMAGES), "several images, a text-only row":
                       SEVERAL, "text": (PROMPTS[1:], [None])}[which]  # fmt: skip
    prompts = [p.replace("<image>", "") if im is None else p
               for p, im in zip(prompts, images, strict=True)]  # fmt: skip
    inp = model.prepare(images, prompts)
    runs = []
    handle = model.vision.vision_model.register_forward_hook(lambda *a: runs.append(1))
    try:
        ours = model.generate(inp, 6, stop_at_eos=False)
    finally:
        handle.remove()
    assert len(runs) == (1 if inp.has_images else 0)  # the image side: once, not per step
    with torch.no_grad():
        theirs = reference.generate(**hf_kwargs(model, inp), max_new_tokens=6, do_sample=False,
                                    eos_token_id=[], pad_token_id=model.tokenizer.pad_token_id)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours, _greedy_by_hand(model, inp, 6))


def test_generate_continues_our_and_tl_s_kv_cache(pair, inp):
    """A frozen prefix cache after the last image (the rest of the prompt as tokens) and a
    TransformerLens cache filled by one call and continued by another give the whole run's
    tokens; the cross layers' cached K/V are the image side's, never extended."""
    model, _, _ = pair
    n = 3
    whole = model.generate(inp, 2 * n, stop_at_eos=False, new_tokens_only=True)
    cut = int(inp.groups["image"].float().argmax(-1).max()) + 1
    cache = model.run_prefix(inp, cut)
    suffix = model.generate(inp.input_ids[:, cut:], 2 * n, stop_at_eos=False, new_tokens_only=True,
                            past_kv_cache=cache, attention_mask=inp.attention_mask[:, cut:])
    assert torch.equal(suffix, whole) and cache.length == cut  # left frozen
    n_img = model.layout(inp).cross.states.shape[1]
    for layer in CROSS_LAYERS:
        assert cache.keys[layer].shape[2] == n_img
        assert torch.equal(cache.keys[layer], cache.cross.kv[layer][0])
    tl = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(inp))
    first = model.generate(inp, n, stop_at_eos=False, new_tokens_only=True, past_kv_cache=tl)
    rest = model.generate(first[:, -1:], n, stop_at_eos=False, new_tokens_only=True,
                          past_kv_cache=tl)
    assert torch.equal(torch.cat([first, rest], 1), whole)
    p = inp.shape[1]
    assert tl.previous_attention_mask.shape == (len(inp), p + 2 * n - 1)
    assert tl.entries[CROSS_LAYERS[0]].past_keys.shape[1] == n_img
    assert tl.entries[0].past_keys.shape[1] == p + 2 * n - 1
    # embeddings and our cache: the cache holds the image
    embeds = model.embed(inp.input_ids[:, cut:].to(model.cfg.device))
    assert torch.equal(model.generate(embeds, 2 * n, stop_at_eos=False, past_kv_cache=cache,
                                      return_type="tokens")[:, -2 * n :], whole)


@pytest.mark.parametrize("activation", ["resid_pre", "attn_out"])
def test_patch_sweep_is_transformer_lens_s(pair, activation):
    """The prefix-sharing patch sweep (a cached prefix continued per patched position) =
    TransformerLens' get_act_patch_*: the cross layers read the whole image side from the
    prefix cache (it has no sequence axis to cut) and every row of the patched batch reads its
    example's image side."""
    model, _, _ = pair
    clean = model.prepare(IMAGES, PROMPTS, answers=["star", "cat"])
    corrupted = model.prepare([noise_image(16, 16, 7), noise_image(20, 50, 8)], PROMPTS,
                              answers=["star", "cat"])  # fmt: skip

    def metric(logits):
        return answer_logprob(logits[:, -1], clean.answer_ids).mean()

    ours = patch_sweep(model, clean, corrupted, metric, activation, batch_size=8,
                       progress=False)  # fmt: skip
    _, cache = model.run_with_cache(clean)
    with torch.no_grad():
        ref = getattr(tl_patching, f"get_act_patch_{activation}")(model, corrupted, cache, metric)
    assert (ours.values - ref).abs().max() <= 1e-5
    assert ref.std() > 1e-3


def test_refusals(pair, inp):
    model, _, _ = pair
    with pytest.raises(ValueError, match="the image is not in the embeddings"):
        model.generate(model.embed_input(inp), 2)
    embeds = model.vision(inp)
    with pytest.raises(ValueError, match="precomputed image embeddings are not supported"):
        model(inp.with_image_embeds(embeds))
