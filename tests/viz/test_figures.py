"""Figures return a matplotlib Figure headless; patch grids, attention, logit lens and the
collapsed circuitsvis view are checked against the model's own numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from lvlm_lens import HookedLVLM, synthetic_records, toy_checkpoint_path
from lvlm_lens.data import CLASSES
from lvlm_lens.viz import (
    attention_overlay,
    bar_plot,
    collapsed_attention,
    head_attention,
    head_heatmap,
    heatmaps,
    image_grids,
    image_groups,
    line_plot,
    logit_lens,
    similarity_matrix,
)
from tests.helpers import PROMPTS, noise_image


@pytest.fixture(scope="module")
def toy_pair():
    model = HookedLVLM.from_pretrained(toy_checkpoint_path())
    recs = synthetic_records(2, seed=0)
    inp = model.prepare([r.image for r in recs], [r.prompt for r in recs],
                        [r.answer for r in recs])
    return model, inp, recs


@pytest.fixture(scope="module")
def next_pair(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-next-mistral"))
    inp = model.prepare([noise_image(20, 28, 1), noise_image(30, 18, 2)], PROMPTS)
    return model, inp


def test_basic_figures_headless():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"layer": [0, 1, 2] * 2, "mean": rng.normal(size=6),
                          "low": -1.0, "high": 1.0, "edge": ["a"] * 3 + ["b"] * 3})
    figs = [head_heatmap(rng.normal(size=(4, 8)), mark=[(1, 2)]),
            heatmaps({"x": rng.normal(size=(4, 8)), "y": rng.random((4, 8))}),
            line_plot(frame, "layer", hue="edge"), line_plot(frame, "layer", panels="edge"),
            bar_plot(frame.head(3), "layer"),
            similarity_matrix(np.eye(4), ["a", "a", "b", "b"])]
    for fig in figs:
        assert isinstance(fig, Figure)
        fig.canvas.draw()  # renders with Agg, no display needed


def test_image_grids_cover_every_image_token_once(next_pair, toy_pair):
    model, inp = next_pair
    for i in range(len(inp)):
        grids = image_grids(inp, i)
        assert [g.kind for g in grids] == ["base", "high-res"]
        pos = np.concatenate([g.positions[g.positions >= 0] for g in grids])
        coords = inp.image_coords[i]
        newlines = int((coords[:, 0] == -1).sum())
        assert len(pos) == len(set(pos.tolist())) == int(inp.groups["image"][i].sum()) - newlines
        assert inp.groups["image"][i][torch.as_tensor(pos)].all()
        # a wide picture has a wide high-res grid, a tall one a tall grid
    assert image_grids(inp, 0)[1].positions.shape[1] > image_grids(inp, 0)[1].positions.shape[0]
    assert image_grids(inp, 1)[1].positions.shape[0] > image_grids(inp, 1)[1].positions.shape[1]
    toy, tinp, _ = toy_pair
    (grid,) = image_grids(tinp, 1)
    assert grid.positions.shape == (6, 6) and grid.crop
    assert (grid.positions.ravel() == tinp.positions("image", 1).numpy()).all()


OTHER_KINDS = ["qwen2-vl", "gemma3", "internvl", "idefics3", "qwen3-vl-moe",
               "llava-onevision-1.5", "smolvlm2", "glm4v", "glm4v-moe", "llama4"]  # fmt: skip
OTHER_KINDS += ["mistral3"]
OTHER_KINDS += ["gemma4"]
#: The grid of the tall 30x18 px image where it follows the picture's aspect, by each family's
#: resize rule, both on a 4-px merged patch: Qwen's rounds each side to the nearest multiple,
#: round(7.5) x round(4.5) = 8x4 (Python rounds half to even); Pixtral's keeps a picture under
#: its 32-px longest side and rounds each side up, ceil(30/4) x ceil(18/4) = 8x5.
TALL_GRID = {"mistral3": (8, 5)}
#: Gemma 4's keeps the aspect at a budget of 70 tokens of 6x6 px: 20x28 px -> 42x54 (7x9),
#: 30x18 px -> 60x36 (10x6).
TALL_GRID["gemma4"] = (10, 6)


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_image_grids_of_the_other_families(tiny_checkpoint, kind):
    """Qwen's grid follows the picture's aspect, uncropped; Gemma's is square; InternVL's and
    Idefics3's base grid is the thumbnail / global image (tile 0, last in the sequence)."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint(kind, chat_template=True))
    inp = model.prepare([noise_image(20, 28, 1), noise_image(30, 18, 2)], PROMPTS)
    (grid,) = image_grids(inp, 0)
    assert grid.kind == "base" and not grid.crop and (grid.positions >= 0).all()
    image = inp.positions("image", 0).numpy()
    tiled = ("internvl", "idefics3", "smolvlm2", "llama4")  # SmolVLM2 tiles as Idefics3
    shape = (4, 4) if kind in tiled or kind == "gemma3" else (5, 7)
    shape = (2, 2) if kind == "llama4" else shape  # 28-px tiles: 2x2 tokens each
    shape = (7, 9) if kind == "gemma4" else shape
    assert grid.positions.shape == shape
    base = image[-shape[0] * shape[1] :] if kind in tiled else image  # after the other tiles
    assert (grid.positions.ravel() == base).all()
    square = ("gemma3", *tiled)
    tall = shape if kind in square else TALL_GRID.get(kind, (8, 4))
    assert image_grids(inp, 1)[0].positions.shape == tall


def test_attention_overlay_shows_the_models_pattern(next_pair):
    model, inp = next_pair
    att = head_attention(model, inp, [(1, 2)], query="final", index=1)[(1, 2)]
    _, cache = model.run_with_cache(inp, names_filter="blocks.1.attn.hook_pattern")
    want = cache["blocks.1.attn.hook_pattern"][1, 2, -1].numpy()
    np.testing.assert_allclose(att, want, atol=1e-6)
    assert att.sum() == pytest.approx(1.0, abs=1e-5)
    fig = attention_overlay(model, inp, [(0, 1), (1, 2)], query="question", index=0,
                            picture=noise_image(20, 28, 1))
    assert isinstance(fig, Figure) and len(fig.axes) >= 4
    fig.canvas.draw()


def test_logit_lens_ends_at_the_models_prediction(toy_pair):
    model, inp, recs = toy_pair
    lens = logit_lens(model, inp, CLASSES, index=1)
    logits = model(inp)[1, -1].float()
    ids = [model.to_single_token(c) for c in CLASSES]
    want = logits.softmax(-1)[ids]
    torch.testing.assert_close(lens.probs[-1, -1], want, atol=1e-5, rtol=1e-4)
    frame = lens.to_frame()
    last = frame[(frame.layer == model.cfg.n_layers - 1)].iloc[-1]
    assert last.top_word == recs[1].answer and last.group == "final"
    assert (frame.group == "image").sum() == 36 * (model.cfg.n_layers + 1)
    fig = lens.plot(picture=recs[1].image)
    assert isinstance(fig, Figure)
    fig.canvas.draw()


def test_collapsed_attention_keeps_rows_normalised(next_pair):
    model, inp = next_pair
    groups = image_groups(inp, 0)
    assert sorted(p for v in groups.values() for p in v) == inp.positions("image", 0).tolist()
    col = collapsed_attention(model, inp, [(0, 0), (1, 3)], index=0)
    n_text = int(inp.groups["text"][0].sum())
    assert len(col.tokens) == n_text + len(groups)
    assert col.pattern.shape == (2, len(col.tokens), len(col.tokens))
    np.testing.assert_allclose(col.pattern.sum(-1), 1.0, atol=1e-5)
    # a text query's attention to a group = the sum over the group's tokens
    _, cache = model.run_with_cache(inp, names_filter="blocks.1.attn.hook_pattern")
    p = cache["blocks.1.attn.hook_pattern"][0, 3, -1].numpy()
    first = next(i for i, t in enumerate(col.tokens) if t.startswith("[img"))
    assert col.pattern[1, -1, first] == pytest.approx(p[col.members[first]].sum(), abs=1e-5)
    html = str(col.render())
    assert "img" in html


def test_logit_lens_plot_draws_every_grid_of_an_any_resolution_image(next_pair):
    """LLaVA-NeXT: the base tile and the high-res grid each get a row of panels, and every
    panel shows the top candidate of the tokens at its cells."""
    model, inp = next_pair
    lens = logit_lens(model, inp, ["star", "circle", "square"], index=1)
    grids = image_grids(lens.inp)
    assert [g.kind for g in grids] == ["base", "high-res"]
    fig = lens.plot(layers=[-1, 0, 1], picture=noise_image(30, 18, 2))
    fig.canvas.draw()
    top = lens.top_words()
    for row, grid in enumerate(grids):
        for col, layer in enumerate([-1, 0, 1]):
            drawn = np.ma.filled(fig.axes[row * 4 + col].images[-1].get_array(), np.nan)
            np.testing.assert_array_equal(drawn, grid.fill(top[layer + 1].astype(float)))
