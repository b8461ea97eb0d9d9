"""Prefix-sharing patching and knockout sweeps equal TransformerLens' sweeps and knockout_effect."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tl_patching

from lvlm_lens import HookedLVLM
from lvlm_lens.interventions.knockout import knockout_effect, window_layers
from lvlm_lens.interventions.metrics import answer_logprob
from lvlm_lens.interventions.sweeps import (
    image_rows,
    knockout_window_sweep,
    patch_sweep,
    single_positions,
    token_groups,
)
from tests.helpers import PROMPTS, noise_image

TL = {
    "resid_pre": tl_patching.get_act_patch_resid_pre,
    "resid_mid": tl_patching.get_act_patch_resid_mid,
    "attn_out": tl_patching.get_act_patch_attn_out,
    "mlp_out": tl_patching.get_act_patch_mlp_out,
}


KINDS = ["llava-llama", "llava-onevision-qwen2"]  # multi-head; GQA, any-resolution tiles
# M-RoPE; image blocks both ways; prefix-LM; linear attention (no prefix of its state cached)
FAMILIES = ["qwen2-vl", "gemma3", "paligemma2", "qwen3.5"]


@pytest.fixture(scope="module")
def load(tiny_checkpoint):
    models = {}

    def get(kind):
        if kind not in models:
            kw = {"chat_template": True} if kind in FAMILIES else {}
            path = tiny_checkpoint(kind, num_hidden_layers=3, **kw)
            models[kind] = HookedLVLM.from_pretrained(path)
        return models[kind]

    return get


@pytest.fixture(scope="module", params=KINDS)
def model(request, load):
    return load(request.param)


def images(*seeds):
    return [noise_image(20, 20, s) for s in seeds]


def make_pair(model):
    """A left-padded batch of two; the corrupted run differs in the images only."""
    clean = model.prepare(images(1, 2), PROMPTS, answers=["star", "cat"])
    corrupted = model.prepare(images(7, 8), PROMPTS, answers=["star", "cat"])
    assert (clean.attention_mask == 0).any()
    return clean, corrupted


@pytest.fixture(scope="module")
def pair(model):
    return make_pair(model)


def metric_of(inp):
    return lambda logits: answer_logprob(logits[:, -1], inp.answer_ids).mean()


@pytest.mark.parametrize(
    ("kind", "activation"),
    [(KINDS[0], a) for a in TL] + [(k, "resid_pre") for k in (KINDS[1], *FAMILIES)],
)
def test_single_positions_equal_transformer_lens(load, kind, activation):
    model = load(kind)
    clean, corrupted = make_pair(model)
    metric = metric_of(clean)
    ours = patch_sweep(model, clean, corrupted, metric, activation, batch_size=8,
                       progress=False)
    _, cache = model.run_with_cache(clean)
    with torch.no_grad():
        ref = TL[activation](model, corrupted, cache, metric)
    assert ours.values.shape == ref.shape == (model.cfg.n_layers, clean.shape[1])
    assert (ours.values - ref).abs().max() <= 1e-5
    assert ref.std() > 1e-3
    if activation == "resid_pre":  # layer 0, text before the image: nothing changes, not run
        assert ours.skipped > 0


def by_hand(model, corrupted, cache, name, where, metric):
    def hook(act, hook):
        return torch.where(where[..., None].to(act.device), cache[name], act)

    with torch.no_grad():
        return float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])))


def test_groups_and_a_changed_question(model):
    """Groups (tokens, image rows, one reaching position 0), a corrupted question, a named
    metric; each entry equals one hooked full run."""
    clean = model.prepare(images(1, 2), PROMPTS, answers=["star", "cat"])
    other = [p.replace("what", "where") for p in PROMPTS]
    corrupted = model.prepare(images(1, 2), other, answers=["star", "cat"])
    rows = image_rows(clean)
    assert len(rows) > 1 and all((r.sum(-1) == r[0].sum()).all() and r[0].sum() > 1
                                 for r in rows.values())
    groups = {**token_groups(clean), **rows}
    reach = torch.zeros(clean.shape, dtype=torch.bool)
    reach[:, 0], reach[:, -3] = True, True
    groups["first and third last"] = reach
    assert {"image", "question", "final"} <= set(groups)
    res = patch_sweep(model, clean, corrupted, "logprob", "resid_pre", groups, layers=[0, 2],
                      batch_size=5, progress=False)
    metric = metric_of(clean)
    _, cache = model.run_with_cache(clean)
    for li, layer in enumerate(res.layers):
        for gi, name in enumerate(res.groups):
            want = by_hand(model, corrupted, cache, f"blocks.{layer}.hook_resid_pre",
                           groups[name], metric)
            assert abs(res.values[li, gi] - want) <= 1e-5, (layer, name)
    frame = res.to_frame()
    assert list(frame.index) == [0, 2] and list(frame.columns) == list(groups)
    assert torch.equal(torch.tensor(frame.to_numpy()), res.values)
    assert res.values.std() > 1e-3


def test_bad_groups(model, pair):
    clean, corrupted = pair
    with pytest.raises(ValueError, match="hold no position"):
        patch_sweep(model, clean, corrupted, "logit",
                    groups={"none": torch.zeros(clean.shape, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown activation"):
        patch_sweep(model, clean, corrupted, "logit", "attn_scores")
    assert list(single_positions(clean, "final")) == [str(clean.shape[1] - 1)]


@pytest.mark.parametrize(
    ("source", "target", "kw"),
    [
        ("image", "final", {}),
        ("image", "question", {"heads": [1], "metric": "logit"}),
        ("question", "final", {"metric": "logprob", "relative": True}),
    ],
)
def test_knockout_windows_equal_knockout_effect(model, pair, source, target, kw):
    inp = pair[0]
    n = model.cfg.n_layers
    sweep = knockout_window_sweep(model, inp, source, target, window=2, progress=False, **kw)
    assert sweep.shape == (n, len(inp))
    for centre in range(n):
        layers = window_layers(centre, 2, n)
        ref = knockout_effect(model, inp, source, target, layers, **kw)
        assert (sweep[centre] - ref).abs().max() <= 1e-5
    assert sweep.abs().max() > 1e-4


@pytest.mark.parametrize("kind", FAMILIES)
def test_family_knockout_windows_and_image_rows(load, kind):
    """M-RoPE positions and bidirectional image blocks: a knockout into the image (whose first
    query sits inside a block) and image-row patches (the block is recomputed whole)."""
    model = load(kind)
    clean, corrupted = make_pair(model)
    n = model.cfg.n_layers
    sweep = knockout_window_sweep(model, clean, "question", "image", window=2, progress=False,
                                  metric="logit")
    for centre in range(n):
        ref = knockout_effect(model, clean, "question", "image", window_layers(centre, 2, n),
                              metric="logit")
        assert (sweep[centre] - ref).abs().max() <= 1e-5
    rows = image_rows(clean)
    res = patch_sweep(model, clean, corrupted, "logprob", "resid_pre", rows, layers=[1],
                      progress=False)
    metric = metric_of(clean)
    _, cache = model.run_with_cache(clean)
    for gi, name in enumerate(res.groups):
        want = by_hand(model, corrupted, cache, "blocks.1.hook_resid_pre", rows[name], metric)
        assert abs(res.values[0, gi] - want) <= 1e-5, name
    assert res.values.std() > 1e-4


def test_image_row_labels_and_masks(load):
    """One image per example without tiles (LLaVA): ``row r`` holds the r-th run of ``side``
    image tokens of every example; with any-resolution tiles (OneVision) the labels name the
    image and tile."""
    model = load("llava-llama")
    clean = model.prepare(images(1, 2), PROMPTS)
    vision = model.hf_model.config.vision_config
    side = vision.image_size // vision.patch_size
    rows = image_rows(clean)
    assert list(rows) == [f"row {r}" for r in range(side)]
    for i in range(len(clean)):
        pos = clean.groups["image"][i].nonzero().flatten()
        assert len(pos) == side * side
        for r in range(side):
            want = torch.zeros(clean.shape[1], dtype=torch.bool)
            want[pos[r * side : (r + 1) * side]] = True
            assert torch.equal(rows[f"row {r}"][i], want)
    tiled = image_rows(load("llava-onevision-qwen2").prepare(images(1, 2), PROMPTS))
    assert [f"image 0 tile 0 row {r}" for r in range(side)] == list(tiled)[:side]
    assert len(tiled) > side and all(name.startswith("image 0 tile ") for name in tiled)
