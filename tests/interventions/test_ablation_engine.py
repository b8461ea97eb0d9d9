"""Head ablation: the fast engine against the reference hooks, identities, bad arguments."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.interventions.ablation import (
    HeadAblation,
    compute_baseline,
    head_ablation_hooks,
    query_scope,
    source_mask,
)
from lvlm_lens.interventions.engine import AblationEngine, run_reference
from lvlm_lens.interventions.metrics import get_metric
from tests.helpers import PROMPTS, baseline_for, check_engine_equals_reference, noise_image

KINDS = ["llava-llama", "llava-onevision-qwen2"]  # multi-head; GQA with q/k/v bias


@pytest.fixture(scope="module", params=KINDS)
def setup(request, tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint(request.param))
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    assert (inp.attention_mask == 0).any()  # a padded batch
    return model, inp


@pytest.mark.parametrize("scope", ["text", "all"])
@pytest.mark.parametrize("baseline", ["mean", "image", "blank", "zero"])
def test_fast_engine_equals_reference(setup, baseline, scope):
    check_engine_equals_reference(*setup, baseline, scope, n_masks=64, batch_size=24, rate=0.2)


def test_no_head_ablated_is_the_clean_run(setup):
    model, inp = setup
    cfg = HeadAblation(baseline="zero")
    base = baseline_for(model, inp, cfg)
    none = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    clean = model(inp)
    # weights that require grad are never skipped: every hook runs, with weight 0
    zero = torch.zeros(len(inp), model.cfg.n_layers, model.cfg.n_heads, requires_grad=True)
    hooks = head_ablation_hooks(model, inp, zero, base)
    assert len(hooks) == 5 * model.cfg.n_layers
    with torch.no_grad():
        assert (model.run_with_hooks(inp, fwd_hooks=hooks) - clean).abs().max() <= 1e-5
    fast = AblationEngine(model, inp, base, cfg).run(none[None])
    logit = get_metric("logit")(clean[:, -1], clean[:, -1].argmax(-1))
    assert torch.allclose(fast[:, 0], logit, atol=1e-5)


def test_all_heads_with_image_x_equals_a_run_on_x(setup):
    model, inp = setup
    x = noise_image(20, 20, 9)
    cfg = HeadAblation(baseline="image", scope="text")
    base = compute_baseline(model, inp, cfg, baseline_image=x)
    every = torch.ones(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    ablated = model.run_with_hooks(inp, fwd_hooks=head_ablation_hooks(model, inp, every, base))
    on_x = model(model.prepare([x, x], inp.texts))
    after = query_scope(inp, inp.groups["image"], "text")
    assert (ablated - on_x)[after].abs().max() <= 1e-4
    assert (ablated - model(inp))[after].abs().max() > 1e-3
    fast = AblationEngine(model, inp, base, cfg).run(every[None])
    answers = model(inp)[:, -1].argmax(-1)
    assert torch.allclose(fast[:, 0], on_x[torch.arange(2), -1, answers], atol=1e-4)


def test_baseline_equal_to_the_clean_image_changes_nothing(setup):
    model, inp = setup
    cfg = HeadAblation(baseline="image", scope="all")
    images = [noise_image(20, 20, 1), noise_image(20, 20, 2)]
    base = compute_baseline(model, inp, cfg, baseline_image=images)
    masks = sample_masks(8, model.cfg.n_layers, model.cfg.n_heads, rate=0.5, seed=0)
    out = AblationEngine(model, inp, base, cfg).run(masks)
    assert (out - out[:, :1]).abs().max() <= 1e-5


def test_gqa_ablation_is_per_query_head(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-onevision-qwen2"))
    assert model.cfg.n_groups == 2
    inp = model.prepare(noise_image(20, 20, 1), PROMPTS[0])
    base = baseline_for(model, inp, HeadAblation(baseline="zero"))
    one = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    one[1, 0] = True  # query head 0 shares its K/V head with query head 1
    model.cfg.fused_attention = False  # both runs through the same (materialised) branch:
    try:  # a clean cached run's z comes from the fused kernels, equal only to ~1e-6
        _, cache = model.run_with_cache(inp)
        with model.hooks(fwd_hooks=head_ablation_hooks(model, inp, one, base)):
            _, ablated = model.run_with_cache(inp)
    finally:
        model.cfg.fused_attention = True
    z, zc = ablated["blocks.1.attn.hook_z"][0, -1], cache["blocks.1.attn.hook_z"][0, -1]
    assert (z[0] - zc[0]).abs().max() > 1e-4
    assert torch.equal(z[1:], zc[1:])


def test_bad_arguments(setup):
    model, inp = setup
    with pytest.raises(ValueError, match="unknown baseline"):
        HeadAblation(baseline="noise")
    with pytest.raises(ValueError, match="unknown scope"):
        HeadAblation(scope="image")
    with pytest.raises(ValueError, match="empty in example"):
        compute_baseline(model, inp, HeadAblation(baseline="zero", source="system"))
    with pytest.raises(ValueError, match="unknown source group"):
        compute_baseline(model, inp, HeadAblation(baseline="zero", source="objects"))
    with pytest.raises(ValueError, match="baseline_image"):
        compute_baseline(model, inp, HeadAblation(baseline="image"))
    with pytest.raises(ValueError, match="reference_images"):
        compute_baseline(model, inp, HeadAblation(baseline="mean"))
    cfg = HeadAblation(baseline="zero")
    engine = AblationEngine(model, inp, baseline_for(model, inp, cfg), cfg)
    with pytest.raises(ValueError, match="n_layers, n_heads"):
        engine.run(torch.zeros(3, model.cfg.n_layers + 1, model.cfg.n_heads, dtype=torch.bool))


def test_text_source_for_text_only_circuits(setup):
    model, inp = setup
    cfg = HeadAblation(baseline="zero", source="question", scope="text")
    base = compute_baseline(model, inp, cfg)
    masks = sample_masks(16, model.cfg.n_layers, model.cfg.n_heads, rate=0.3, seed=2)
    fast = AblationEngine(model, inp, base, cfg).run(masks)
    ref = run_reference(model, inp, masks, base, cfg)
    assert (fast - ref).abs().max() <= 1e-4 and ref.std() > 1e-3


@pytest.mark.parametrize("rate", [0.03, 0.6])  # sparse (gathered pairs) and dense selection
def test_sparse_and_dense_selection_equal_reference(setup, rate):
    model, inp = setup
    cfg = HeadAblation(baseline="image")
    base = baseline_for(model, inp, cfg)
    masks = sample_masks(64, model.cfg.n_layers, model.cfg.n_heads, rate=rate, seed=3)
    fast = AblationEngine(model, inp, base, cfg, batch_size=64).run(masks)
    ref = run_reference(model, inp, masks, base, cfg)
    assert (fast - ref).abs().max() <= 1e-4


def test_batch_size_and_mask_rows(setup):
    model, inp = setup
    cfg = HeadAblation(baseline="zero")
    base = baseline_for(model, inp, cfg)
    masks = sample_masks(5, model.cfg.n_layers, model.cfg.n_heads, rate=0.3, seed=4)
    one = AblationEngine(model, inp, base, cfg, batch_size=1).run(masks, progress=False)
    assert torch.allclose(one, AblationEngine(model, inp, base, cfg).run(masks, progress=False),
                          atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        AblationEngine(model, inp, base, cfg, batch_size=0)
    with pytest.raises(ValueError, match="3 rows for a batch of 2"):
        head_ablation_hooks(model, inp, masks[:3], base)
    # one example of the batch: the same row as when all run
    engine = AblationEngine(model, inp, base, cfg)
    assert torch.allclose(engine.run(masks, examples=[1], progress=False), one[1:], atol=1e-5)
    image = inp.groups["image"]
    for bad in (image[:, :-1], image.long(), image[:1]):
        with pytest.raises(ValueError, match="source mask must be bool"):
            source_mask(inp, bad)
    assert torch.equal(source_mask(inp, image.clone()), image)


def test_progress_bars_show_unless_silenced(setup, capsys):
    model, inp = setup
    cfg = HeadAblation(baseline="zero")
    base = baseline_for(model, inp, cfg)
    masks = sample_masks(3, model.cfg.n_layers, model.cfg.n_heads, rate=0.3, seed=4)
    engine = AblationEngine(model, inp, base, cfg)
    capsys.readouterr()
    engine.run(masks, progress=False)
    run_reference(model, inp, masks, base, cfg, progress=False)
    assert capsys.readouterr().err == ""
    engine.run(masks)
    err = capsys.readouterr().err
    assert "masked runs" in err and "6/6" in err and "mask/s" in err
    run_reference(model, inp, masks, base, cfg)
    err = capsys.readouterr().err
    assert "reference" in err and "3/3" in err and "mask/s" in err


# M-RoPE; DeepStack; image blocks attending both ways
FAMILY_KINDS = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "gemma3", "internvl", "idefics3"]
FAMILY_KINDS += ["qwen3-vl-moe"]
FAMILY_KINDS += ["llava-onevision-1.5"]
FAMILY_KINDS += ["smolvlm2"]
FAMILY_KINDS += ["glm4v", "glm4v-moe"]
FAMILY_KINDS += ["llama4"]
FAMILY_KINDS += ["mistral3"]
FAMILY_KINDS += ["gemma4"]


@pytest.fixture(scope="module", params=FAMILY_KINDS)
def family_setup(request, tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint(request.param, chat_template=True))
    inp = model.prepare([noise_image(20, 28, 1), noise_image(30, 18, 2)], PROMPTS)
    return model, inp


@pytest.mark.parametrize("scope", ["text", "all"])
@pytest.mark.parametrize("baseline", ["mean", "image", "blank", "zero"])
def test_families_fast_engine_equals_reference(family_setup, baseline, scope):
    check_engine_equals_reference(
        *family_setup, baseline, scope, n_masks=24, batch_size=8, rate=0.25
    )


def test_source_ending_inside_an_image_runs_full_sequences(tiny_checkpoint, monkeypatch):
    """Gemma 3: a source of the first image rows ends inside the image, whose tokens attend to
    each other both ways, so the prefix depends on the tokens after it. The engine then runs
    full sequences (the reference); a shared prefix cut there would be wrong."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("gemma3", chat_template=True))
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    top = inp.groups["image"].clone()
    for i in range(2):
        top[i, inp.positions("image", i)[8:]] = False  # the first two of four rows
    inp.groups["top"] = top
    cfg = HeadAblation(baseline="zero", scope="text", source="top")
    base = compute_baseline(model, inp, cfg)
    masks = sample_masks(16, model.cfg.n_layers, model.cfg.n_heads, rate=0.3, seed=4)
    ref = run_reference(model, inp, masks, base, cfg)
    fast = AblationEngine(model, inp, base, cfg, batch_size=8).run(masks)
    assert (fast - ref).abs().max() <= 1e-4 and ref.std() > 1e-3
    monkeypatch.setattr("lvlm_lens.model.layout.TokenLayout.splits_block", lambda self, cut: False)
    cut_prefix = AblationEngine(model, inp, base, cfg, batch_size=8).run(masks)
    assert (cut_prefix - ref).abs().max() > 1e-3
