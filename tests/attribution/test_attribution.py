"""Head attribution end to end (the rankings it is compared with: test_rankings.py)."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.head_attribution import (
    AttributionConfig,
    check_config,
    fit_result,
    head_attribution,
)
from lvlm_lens.attribution.regression import fit_linear, fit_pooled, sample_masks
from lvlm_lens.errors import OptionError
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.interventions.engine import run_reference
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
    """Every option reaches its step: masks (n, rate, seed), the metric, the baseline images,
    the batch size, the regression (method, holdout, seed), the result's fields."""
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    refs = [noise_image(20, 20, 7), noise_image(20, 20, 8)]
    cfg = AttributionConfig(n_masks=120, rate=0.1, seed=3, metric="logprob", method="ols",
                            holdout=0.3, batch_size=7, ablation=HeadAblation(baseline="mean"))
    result = head_attribution(model, inp, cfg, reference_images=refs, progress=False)
    masks = sample_masks(120, model.cfg.n_layers, model.cfg.n_heads, rate=0.1, seed=3)
    assert torch.equal(result.masks, masks)
    base = compute_baseline(model, inp, cfg.ablation, reference_images=refs)
    ref = run_reference(model, inp, masks[:6], base, cfg.ablation, "logprob", progress=False)
    assert torch.allclose(result.metrics[:, :6], ref, atol=1e-4)  # example i in row i
    kw = dict(method="ols", holdout=0.3, seed=3)
    for i in range(2):
        fit = fit_linear(masks, result.metrics[i], **kw)
        assert torch.equal(result.coef[i], fit.coef) and result.r2[i] == fit.r2
    pooled = fit_pooled([masks, masks], list(result.metrics), **kw)
    assert torch.equal(result.pooled_coef, pooled.coef) and result.pooled_r == pooled.pearson_r
    assert result.options["ablation"]["baseline"] == "mean" and result.options["rate"] == 0.1
    assert result.model_name == model.cfg.model_name != ""
    image = HeadAblation(baseline="image")
    one = head_attribution(model, inp.select(0), AttributionConfig(n_masks=20, ablation=image),
                           baseline_image=refs[0], progress=False)  # fmt: skip
    base = compute_baseline(model, inp.select(0), image, baseline_image=refs[0])
    want = run_reference(model, inp.select(0), one.masks[:3], base, image, progress=False)
    assert torch.allclose(one.metrics[:, :3], want, atol=1e-4)
    assert one.pooled_coef is None  # one example: no pooled fit
    order = torch.argsort(pooled.coef.flatten(), stable=True)[:3].tolist()
    assert result.top_heads(3) == [divmod(j, model.cfg.n_heads) for j in order]


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
    # 12 heads, holdout 0.2: 15 masks hold out 3 and leave 12 to fit (too few), 16 leave 13
    assert model.cfg.n_layers * model.cfg.n_heads == 12
    msg = r"n_masks must be >= 16 for a ols fit \(OLS over 12 heads .* 13 fit, 3 held-out .*got 15"
    with pytest.raises(OptionError, match=msg):
        check_config(model, AttributionConfig(n_masks=15, method="ols"))
    check_config(model, AttributionConfig(n_masks=16, method="ols"))
    # ridge: 3 held out, 2 validation, 8 to fit whatever the heads
    check_config(model, AttributionConfig(n_masks=13))
    with pytest.raises(OptionError, match=r"n_masks must be >= 13 for a ridge fit .*got 12$"):
        AttributionConfig(n_masks=12)


def test_fit_result_keeps_example_ids():
    masks = sample_masks(40, 3, 4, rate=0.2, seed=0)
    metrics = torch.randn(2, 40, generator=torch.Generator().manual_seed(0))
    result = fit_result(masks, metrics, AttributionConfig(n_masks=40), "m", ["a.png", "b.png"])
    assert result.example_ids == ["a.png", "b.png"] and result.model_name == "m"
    unnamed = fit_result(masks, metrics, AttributionConfig(n_masks=40))
    assert unnamed.model_name == "" and unnamed.example_ids is None


def test_default_config_runs_on_a_single_input(model):
    """The default baseline needs no reference image: ``AttributionConfig()`` runs as is."""
    inp = model.prepare(noise_image(20, 20, 4), PROMPTS[1])
    assert AttributionConfig().ablation.baseline == HeadAblation().baseline == "blank"
    result = head_attribution(model, inp, progress=False)
    assert result.metrics.shape == (1, AttributionConfig().n_masks)
    assert result.metrics.std() > 1e-3 and torch.isfinite(result.pearson_r).all()


def test_config_refuses_each_bad_option_naming_its_field():
    """One OptionError per bad option, naming the field (the CLI words it with the flag)."""
    bad = [(dict(rate=0.0), "rate", "must lie in (0, 1), got 0.0"),
           (dict(holdout=1.0), "holdout", "must lie in [0, 1), got 1.0"),
           (dict(holdout=-0.1), "holdout", "must lie in [0, 1), got -0.1"),
           (dict(seed=-1), "seed", "must be >= 0, got -1"),
           (dict(batch_size=0), "batch_size", "must be >= 1, got 0"),
           (dict(n_masks=12), "n_masks", "must be >= 13 for a ridge fit (per example: 8 fit, "
                                         "2 validation, 3 held-out masks), got 12"),
           (dict(n_masks=5, holdout=0.5), "n_masks", "must be >= 6 for a ridge fit (per "
                                                     "example: 2 fit, 1 validation, 3 held-out "
                                                     "masks), got 5")]  # fmt: skip
    for kw, field, problem in bad:
        with pytest.raises(OptionError) as err:
            AttributionConfig(**kw)
        assert (err.value.field, err.value.problem) == (field, problem)
    for kw in (dict(holdout=0.0), dict(holdout=0.9), dict(seed=0), dict(batch_size=1)):
        AttributionConfig(**kw)  # the edges that work
