"""The fused attention branch equals the materialised one (fp32, <= 1e-5)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.model.attention import Segment
from lvlm_lens.model.fused_attention import _cuda_lse, explicit_lse, fused_attention
from tests.helpers import PROMPTS, noise_image

TOL = 1e-5
CASES = {  # MHA; GQA with q/k/v biases; GQA with a sliding window shorter than the prompt;
    # M-RoPE; image blocks attending both ways with q/k norms; DeepStack
    "llama": ("llava-llama", {}),
    "qwen2-gqa": ("llava-onevision-qwen2", {}),
    "mistral-window": ("llava-next-mistral", {"sliding_window": 12}),
    "qwen2-vl": ("qwen2-vl", {"chat_template": True}),
    "gemma3": ("gemma3", {"chat_template": True}),
    "qwen3-vl": ("qwen3-vl", {"chat_template": True}),
}


@contextmanager
def materialised(model):
    model.cfg.fused_attention = False
    try:
        yield
    finally:
        model.cfg.fused_attention = True


@pytest.fixture(scope="module", params=list(CASES))
def setup(request, tiny_checkpoint):
    kind, kw = CASES[request.param]
    model = HookedLVLM.from_pretrained(tiny_checkpoint(kind, **kw))
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    assert (inp.attention_mask == 0).any()  # left padding: the pad queries have no key
    return model, inp


def both(model, fn):
    with torch.no_grad():
        fused = fn()
        with materialised(model):
            ref = fn()
    return fused, ref


def test_plain_forward(setup):
    model, inp = setup
    fused, ref = both(model, lambda: model(inp))
    assert (fused - ref).abs().max() <= TOL  # every position, padding included
    assert ref.std() > 0.1


def test_kv_cache_and_generate(setup):
    model, inp = setup
    cut = int((inp.groups["image"] * torch.arange(inp.shape[1])).max()) + 1

    def cached():
        cache = model.run_prefix(inp, cut)
        return model(inp.input_ids[:, cut:], past_kv_cache=cache)

    fused, ref = both(model, cached)
    assert (fused - ref).abs().max() <= TOL
    fused, ref = both(model, lambda: model.generate(inp, max_new_tokens=4, eos_token_id=[]))
    assert torch.equal(fused, ref)


@pytest.mark.parametrize("rows", [1, 3])  # one prefix per row / 3 suffixes per cached example
def test_shared_prefix_of_several_examples(setup, rows):
    model, inp = setup
    cut = int((inp.groups["image"] * torch.arange(inp.shape[1])).max()) + 1
    ids = inp.input_ids[:, cut:].repeat_interleave(rows, 0)
    mask = torch.ones_like(ids)
    ids[1::2, :2], mask[1::2, :2] = 0, 0  # some suffixes left-padded

    def run():
        return model(ids, past_kv_cache=model.run_prefix(inp, cut), attention_mask=mask)

    fused, ref = both(model, run)
    assert (fused - ref).abs().max() <= TOL


@pytest.mark.parametrize("scope", ["text", "all"])
@pytest.mark.parametrize("baseline", ["mean", "image", "blank", "zero"])
def test_engine(setup, baseline, scope):
    model, inp = setup
    cfg = HeadAblation(baseline=baseline, scope=scope)
    base = compute_baseline(model, inp, cfg, baseline_image=noise_image(20, 20, 5),
                            reference_images=[noise_image(20, 20, s) for s in (6, 7)])
    sparse = sample_masks(8, model.cfg.n_layers, model.cfg.n_heads, rate=0.1, seed=1)
    dense = sample_masks(8, model.cfg.n_layers, model.cfg.n_heads, rate=0.6, seed=2)
    masks = torch.cat([sparse, dense])
    engine = AblationEngine(model, inp, base, cfg, metric="logit_diff", batch_size=8)
    fused, ref = both(model, lambda: engine.run(masks, progress=False))
    assert (fused - ref).abs().max() <= TOL
    assert ref.std() > 1e-2


def random_segments(b, r, h, h_kv, lengths, alt=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    segs = []
    for i, n in enumerate(lengths):
        kb = b // r if i < len(lengths) - 1 else b  # cached segments: batch b / r
        k, v = (torch.randn(kb, h_kv, n, 8, generator=gen) for _ in range(2))
        if alt and i == 0:
            sel = torch.rand(b, h, generator=gen) < 0.3
            sel[0, 1] = True
            index = sel.nonzero(as_tuple=True)
            segs.append(Segment(k, v, k + 1, v - 1, sel, index))
        else:
            segs.append(Segment(k, v))
    q = torch.randn(b, h, 3, 8, generator=gen)
    return q, segs


def test_engine_on_full_sequences_with_restricted_queries(tiny_checkpoint):
    """Gemma 3, a source ending inside an image: the engine runs full sequences where only the
    queries after the source read the baseline (a segment's ``queries``)."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("gemma3", chat_template=True))
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    top = inp.groups["image"].clone()
    for i in range(2):
        top[i, inp.positions("image", i)[8:]] = False
    inp.groups["top"] = top
    cfg = HeadAblation(baseline="zero", scope="text", source="top")
    masks = sample_masks(16, model.cfg.n_layers, model.cfg.n_heads, rate=0.3, seed=4)
    engine = AblationEngine(model, inp, compute_baseline(model, inp, cfg), cfg, batch_size=8)
    fused, ref = both(model, lambda: engine.run(masks, progress=False))
    assert engine._example(0).queries is not None  # the path under test
    assert (fused - ref).abs().max() <= TOL and ref.std() > 1e-3


@pytest.mark.parametrize("alt", [False, True])
@pytest.mark.parametrize(("r", "h_kv"), [(1, 4), (2, 2), (4, 1)])
def test_queries_without_an_allowed_key(tiny_checkpoint, alt, r, h_kv):
    """Rows whose every key is blocked attend uniformly over all keys in the materialised
    branch; the fused merge must give the same, also when only one segment is blocked."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))
    attn = model.blocks[0].attn
    b, h = 4, 4
    q, segs = random_segments(b, r, h, h_kv, [5, 3], alt=alt)
    lo = torch.finfo(torch.float32).min
    mask = torch.zeros(b, 1, 3, 8)
    mask[0, :, 0] = lo  # no key at all
    mask[1, :, 1, :5] = lo  # no prefix key
    mask[2, :, 2, 5:] = lo  # no own key
    mask[3, :, :, 6:] = lo  # ordinary partial mask
    ref = attn._materialised(q, segs, mask)
    fused = fused_attention(q, segs, mask, attn.scaling)
    assert (fused - ref).abs().max() <= TOL


def test_hooks_on_scores_or_pattern_materialise(setup):
    model, inp = setup
    attn = model.blocks[0].attn
    q, segs = random_segments(2, 1, model.cfg.n_heads, model.cfg.n_key_value_heads, [4])
    assert attn.fused(q, segs)
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: seen.append(t))]):
        assert not attn.fused(q, segs)
        model(inp)
    assert len(seen) == 1 and seen[0].shape[-1] == inp.shape[1]
    two = random_segments(2, 1, model.cfg.n_heads, model.cfg.n_key_value_heads, [4, 2])
    q2 = two[0].requires_grad_()
    with torch.enable_grad():
        assert not attn.fused(q2, two[1])  # the merge's log-sum-exp has no gradient
    with torch.no_grad():
        assert attn.fused(q2, two[1])


def test_gradient_through_a_plain_forward(setup):
    model, inp = setup
    x = model.embed_input(inp).detach()

    def grad():
        x.grad = None
        x.requires_grad_()
        model.run_blocks(x, inp.attention_mask)[0][:, -1].sum().backward()
        return x.grad.clone()

    fused = grad()
    with materialised(model):
        ref = grad()
    assert (fused - ref).abs().max() <= TOL * ref.abs().max() and ref.abs().max() > 0


def emulated_efficient_kernel(q, k, v, bias, compute_lse, scale=None):
    """What ``_scaled_dot_product_efficient_attention`` accepts and returns, on the CPU."""
    assert q.shape[:2] == k.shape[:2] == v.shape[:2] == bias.shape[:2], "equal batch and heads"
    assert bias.shape[-2:] == (q.shape[2], k.shape[2]) and bias.dtype == q.dtype
    assert bias.stride(-1) == 1 and bias.stride(-2) % 16 == 0, "a 16-aligned bias"
    o, lse = explicit_lse(q, k, v, bias, scale)
    pad = -q.shape[2] % 32
    return o, torch.nn.functional.pad(lse, (0, pad)), None, None


@pytest.mark.parametrize("h_kv", [4, 2])
def test_cuda_kernel_call(h_kv):
    """The CUDA branch's reshaping (grouped heads, bias alignment, padded lse), checked with an
    emulated kernel; the real kernel's signature and shapes on the meta device."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 5, 8, generator=gen)
    k, v = (torch.randn(3, h_kv, 7, 8, generator=gen) for _ in range(2))
    mask = torch.zeros(3, 1, 5, 7)
    mask[0, :, :, 4:] = torch.finfo(torch.float32).min
    o, lse = _cuda_lse(q, k, v, mask, 0.3, kernel=emulated_efficient_kernel)
    ref_o, ref_lse = explicit_lse(q, k, v, mask, 0.3)
    assert (o - ref_o).abs().max() <= TOL and (lse - ref_lse).abs().max() <= TOL
    meta = [t.to("meta") for t in (q, k, v, mask)]
    o, lse = _cuda_lse(*meta, 0.3)
    assert o.shape == q.shape and lse.shape == q.shape[:3]


@pytest.mark.parametrize("kind", ["llava-llama", "qwen2-vl"])  # 1-D RoPE and M-RoPE positions
def test_empty_prefix_cache(tiny_checkpoint, kind):
    model = HookedLVLM.from_pretrained(tiny_checkpoint(kind, chat_template=kind != "llava-llama"))
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    with torch.no_grad():
        full = model(inp)
        out = model(inp, past_kv_cache=model.run_prefix(inp, 0))
    assert (out - full).abs().max() <= TOL
