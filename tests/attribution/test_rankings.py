"""The rankings head attribution is compared with, against hand computations for every option."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.rankings import (
    attention_weight,
    attribution_patching,
    single_head_ablation,
)
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline, head_ablation_hooks
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.interventions.metrics import get_metric
from tests.helpers import PROMPTS, noise_image


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama", num_hidden_layers=3))
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS,
                        answers=["star", "circle"])  # fmt: skip
    assert (inp.attention_mask == 0).any()  # padded: example 1 starts later
    return model, inp


def hand_attention_weight(model, inp, source: str, queries: str) -> torch.Tensor:
    """Mean over the chosen queries of the attention mass on the source tokens, by loops."""
    _, cache = model.run_with_cache(inp)
    n_b, n_pos = inp.shape
    out = torch.zeros(n_b, model.cfg.n_layers, model.cfg.n_heads)
    for b in range(n_b):
        src = inp.groups[source][b].nonzero()[:, 0].tolist()
        if queries == "final":
            qs = [n_pos - 1]
        else:
            qs = [c for c in range(max(src) + 1, n_pos) if inp.groups["text"][b, c]]
        for layer in range(model.cfg.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][b]
            for h in range(model.cfg.n_heads):
                out[b, layer, h] = sum(float(pattern[h, q, src].sum()) for q in qs) / len(qs)
    return out


@pytest.mark.parametrize(
    ("source", "queries"),
    [("image", "final"), ("image", "text"), ("question", "text"), ("question", "final"),
     ("system", "text")],  # a source before the image: image queries are not text queries
)  # fmt: skip
def test_attention_weight_by_hand(setup, source, queries):
    model, inp = setup
    if source == "system":
        inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)],
                            ["you are a helpful assistant . " + p for p in PROMPTS])  # fmt: skip
    got = attention_weight(model, inp, source, queries)
    want = hand_attention_weight(model, inp, source, queries)
    assert torch.allclose(got, want, atol=1e-5)
    assert want.std() > 1e-3  # the heads differ


def test_the_two_query_scopes_differ(setup):
    model, inp = setup
    final = attention_weight(model, inp, "image", "final")
    text = attention_weight(model, inp, "image", "text")
    assert (final - text).abs().max() > 1e-3


@pytest.mark.parametrize("scope", ["text", "all"])
def test_single_head_ablation_by_hand(setup, scope):
    """Drop of the answer log-probability when only head (l, h) is ablated, for every head,
    computed with the reference hooks (one full run per head)."""
    model, inp = setup
    cfg = HeadAblation(baseline="image", scope=scope)
    base = compute_baseline(model, inp, cfg, baseline_image=noise_image(20, 20, 9))
    got = single_head_ablation(AblationEngine(model, inp, base, cfg, "logprob"), progress=False)
    metric, rows = get_metric("logprob"), torch.arange(len(inp))
    with torch.no_grad():
        clean = metric(model(inp)[rows, -1], inp.answer_ids)
        for layer in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                one = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
                one[layer, h] = True
                hooks = head_ablation_hooks(model, inp, one, base, scope)
                ablated = metric(model.run_with_hooks(inp, fwd_hooks=hooks)[rows, -1],
                                 inp.answer_ids)  # fmt: skip
                assert torch.allclose(got[:, layer, h], clean - ablated, atol=1e-4), (layer, h)
    assert got.abs().max() > 1e-3


@pytest.mark.parametrize(("scope", "metric"), [("text", "logit"), ("all", "logprob")])
def test_attribution_patching_is_a_derivative(setup, scope, metric):
    """``-d metric / d w`` at ``w = 0``: central differences of the interpolating hooks, per head
    and along all heads at once."""
    model, inp = setup
    cfg = HeadAblation(baseline="image", scope=scope)
    base = compute_baseline(model, inp, cfg, baseline_image=noise_image(20, 20, 9))
    grad = attribution_patching(model, inp, base, scope, metric)
    fn, rows = get_metric(metric), torch.arange(len(inp))

    def at(w):
        with torch.no_grad():
            logits = model.run_with_hooks(
                inp, fwd_hooks=head_ablation_hooks(model, inp, w, base, scope)
            )
        return fn(logits[rows, -1], inp.answer_ids)

    eps = 1e-2
    shape = (len(inp), model.cfg.n_layers, model.cfg.n_heads)
    for layer, h in [(0, 1), (2, 3)]:
        w = torch.zeros(shape)
        w[:, layer, h] = eps
        slope = -(at(w) - at(-w)) / (2 * eps)
        assert torch.allclose(grad[:, layer, h], slope, rtol=0.05, atol=1e-3), (layer, h)
    every = torch.full(shape, eps)
    slope = -(at(every) - at(-every)) / (2 * eps)
    assert torch.allclose(grad.sum((1, 2)), slope, rtol=0.05, atol=1e-3)
    assert grad.abs().max() > 1e-2


def test_defaults_are_image_source_final_query_text_scope_logit(setup):
    """Called with defaults: image source, final query; patching at text scope on the logit."""
    model, inp = setup
    assert torch.equal(attention_weight(model, inp), attention_weight(model, inp, "image", "final"))
    cfg = HeadAblation(baseline="image")
    base = compute_baseline(model, inp, cfg, baseline_image=noise_image(20, 20, 9))
    torch.testing.assert_close(attribution_patching(model, inp, base),
                               attribution_patching(model, inp, base, "text", "logit"))  # fmt: skip
