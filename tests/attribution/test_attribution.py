"""Head attribution end to end, and the baseline rankings."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.head_attribution import AttributionConfig, head_attribution
from lvlm_lens.attribution.rankings import (
    attention_weight,
    attribution_patching,
    single_head_ablation,
)
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline, head_ablation_hooks
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.interventions.metrics import final_logits
from tests.helpers import PROMPTS, noise_image


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama", num_hidden_layers=3))


def test_regression_recovers_a_planted_dependence(model):
    """Hooks make the metric an exact linear function of which heads are ablated: each hook
    detects whether its heads' output moved, restores the clean output (no downstream effect)
    and adds the planted coefficient. The fit must find those coefficients."""
    inp = model.prepare(noise_image(20, 20, 1), PROMPTS[0])
    _, clean = model.run_with_cache(inp, names_filter=lambda n: n.endswith("hook_z"))
    planted = torch.randn(
        model.cfg.n_layers, model.cfg.n_heads, generator=torch.Generator().manual_seed(0)
    )
    total = {}

    suffix = inp.shape[1] - (int(inp.positions("image")[-1]) + 1)

    def make_hook(layer):
        def hook(z, hook):
            if z.shape[1] != suffix:  # the prefix run and clean runs: not a masked run
                return z
            zc = clean[hook.name][:, -suffix:]
            moved = (z[:, -1] - zc[:, -1]).abs().amax(-1) > 1e-6  # [batch, head]
            total["sum"] = total.get("sum", 0) + (moved.float() * planted[layer]).sum(-1)
            return zc.expand_as(z)

        return hook

    def metric(logits, answers):
        out = total.pop("sum")
        return out + 0 * logits[:, 0]

    cfg = AttributionConfig(n_masks=600, rate=0.2, seed=0, ablation=HeadAblation(baseline="zero"))
    hooks = [(f"blocks.{i}.attn.hook_z", make_hook(i)) for i in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        result = head_attribution(model, inp, cfg, metric=metric, progress=False)
    coef = result.coef[0]
    assert torch.corrcoef(torch.stack([coef.flatten(), planted.flatten()]))[0, 1] > 0.99
    assert float(result.pearson_r[0]) > 0.99


def test_attribution_on_a_batch(model):
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    cfg = AttributionConfig(n_masks=120, rate=0.1, ablation=HeadAblation(baseline="zero"))
    result = head_attribution(model, inp, cfg, progress=False)
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    assert result.coef.shape == (2, *shape) and result.pooled_coef.shape == shape
    assert result.masks.shape == (120, *shape) and result.metrics.shape == (2, 120)
    assert result.options["ablation"]["baseline"] == "zero"
    assert len(result.top_heads(3)) == 3


def test_bad_attribution_arguments(model):
    for rate in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="rate"):
            AttributionConfig(rate=rate)
    with pytest.raises(ValueError, match="unknown method"):
        AttributionConfig(method="svm")
    inp = model.prepare(noise_image(20, 20, 1), PROMPTS[0])
    with pytest.raises(ValueError, match="OLS over .* heads needs"):
        head_attribution(
            model,
            inp,
            AttributionConfig(n_masks=10, method="ols", ablation=HeadAblation(baseline="zero")),
        )


def test_single_head_ablation_matches_the_reference_hooks(model):
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    cfg = HeadAblation(baseline="zero")
    base = compute_baseline(model, inp, cfg)
    scores = single_head_ablation(AblationEngine(model, inp, base, cfg), progress=False)
    clean = final_logits(model(inp))
    answers = clean.argmax(-1)
    head = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    head[2, 1] = True
    ablated = final_logits(
        model.run_with_hooks(inp, fwd_hooks=head_ablation_hooks(model, inp, head, base))
    )
    drop = clean[torch.arange(2), answers] - ablated[torch.arange(2), answers]
    assert torch.allclose(scores[:, 2, 1], drop, atol=1e-4)


def test_attention_weight_ranking(model):
    inp = model.prepare(noise_image(20, 20, 1), PROMPTS[0])
    scores = attention_weight(model, inp)
    _, cache = model.run_with_cache(inp)
    pattern = cache["blocks.1.attn.hook_pattern"][0, 3, -1]
    assert torch.allclose(scores[0, 1, 3], pattern[inp.groups["image"][0]].sum(), atol=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_attribution_patching_is_the_first_order_ablation_effect(model):
    inp = model.prepare(noise_image(20, 20, 1), PROMPTS[0])
    cfg = HeadAblation(baseline="image")
    base = compute_baseline(model, inp, cfg, baseline_image=noise_image(20, 20, 3))
    grad = attribution_patching(model, inp, base)
    answer = final_logits(model(inp)).argmax(-1)
    eps = 1e-3
    w = torch.zeros(1, model.cfg.n_layers, model.cfg.n_heads)
    w[0, 1, 2] = eps
    nudged = final_logits(
        model.run_with_hooks(inp, fwd_hooks=head_ablation_hooks(model, inp, w, base))
    )
    clean = final_logits(model(inp))
    finite_diff = -(nudged[0, answer] - clean[0, answer]) / eps
    assert torch.allclose(grad[0, 1, 2], finite_diff[0], rtol=0.05, atol=1e-3)
    assert all(p.grad is None for p in model.parameters())


def test_default_config_runs_on_a_single_input(model):
    """The default baseline needs no reference image: ``AttributionConfig()`` runs as is."""
    inp = model.prepare(noise_image(20, 20, 4), PROMPTS[1])
    assert AttributionConfig().ablation.baseline == HeadAblation().baseline == "blank"
    result = head_attribution(model, inp, progress=False)
    assert result.metrics.shape == (1, AttributionConfig().n_masks)
    assert result.metrics.std() > 1e-3 and torch.isfinite(result.pearson_r).all()
