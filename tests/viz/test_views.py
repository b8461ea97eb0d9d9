"""The attention and logit-lens views by hand: which tokens each collapsed group holds, the
collapsed pattern as sums over keys and means over queries, the logit lens's frame and panels
at layer ``l + 1`` of its rows, and the attention panels' opacity. Each test names the wrong
variant it was checked against (planted, seen to fail, reverted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lvlm_lens import HookedLVLM, synthetic_records, toy_checkpoint_path
from lvlm_lens.viz import collapsed_attention, image_grids, image_groups
from lvlm_lens.viz.figures import ExampleView, example_figure
from lvlm_lens.viz.logit_lens import LogitLens


@pytest.fixture(scope="module")
def toy():
    model = HookedLVLM.from_pretrained(toy_checkpoint_path())
    recs = synthetic_records(2, seed=0)
    inp = model.prepare([r.image for r in recs], [r.prompt for r in recs])
    return model, inp


def test_image_groups_are_bands_of_grid_rows_or_the_given_regions(toy):
    """With ``rows_per_group=4`` on the toy's 6 x 6 grid the groups are rows 0-3 and 4-5, each
    the sorted positions of those grid rows; the default band is ``round(rows / 6)`` rows. With
    regions, each region holds the image positions where its mask is True, an empty region is
    dropped and the rest is ``image other``. Fails with bands of columns, the last band's name
    running past the grid, a default band of ``round(rows / 3)`` rows, or a region keeping
    text positions."""
    _, inp = toy
    (grid,) = image_grids(inp, 1)
    groups = image_groups(inp, 1, rows_per_group=4)
    assert list(groups) == ["img rows 0-3", "img rows 4-5"]
    assert groups["img rows 0-3"] == sorted(grid.positions[:4].ravel().tolist())
    assert groups["img rows 4-5"] == sorted(grid.positions[4:].ravel().tolist())
    default = image_groups(inp, 1)
    assert list(default) == [f"img rows {r}-{r}" for r in range(6)]
    assert default["img rows 2-2"] == sorted(grid.positions[2].tolist())
    pos = inp.positions("image", 1).tolist()
    n = inp.shape[1]
    obj = np.zeros(n, bool)
    obj[pos[:5]] = True
    obj[0] = True  # a text position: not an image token, never in a group
    regions = image_groups(inp, 1, regions={"object": obj, "none": np.zeros(n, bool)})
    assert regions == {"object": pos[:5], "image other": pos[5:]}


def test_collapsed_attention_is_key_sums_and_query_means_by_hand(toy):
    """Against a loop over the cached pattern ``P``: a collapsed cell (i, j) is the mean over
    the queries of member set i of the sum of ``P`` over the keys of member set j; a group
    stands where its first token was, and image tokens outside every group stay single. Fails
    with a group's query row its first token's (not the mean), the sum over queries, or the
    keys averaged instead of summed."""
    model, inp = toy
    pos = inp.positions("image", 0).tolist()
    groups = {"b": pos[4:9], "a": pos[:3]}
    col = collapsed_attention(model, inp, [(1, 2), (0, 1)], index=0, groups=groups)
    real = np.nonzero(inp.attention_mask[0].numpy())[0].tolist()
    want_members = []
    for p in real:
        if p == pos[0]:
            want_members.append(pos[:3])
        elif p == pos[4]:
            want_members.append(pos[4:9])
        elif p not in pos[:3] + pos[4:9]:
            want_members.append([p])
    assert col.members == want_members
    assert col.tokens[real.index(pos[0])] == "[a]"
    _, cache = model.run_with_cache(inp, names_filter=lambda name: "hook_pattern" in name)
    for h, (layer, head) in enumerate([(1, 2), (0, 1)]):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"][0, head].double().numpy()
        want = np.array([[np.mean([pat[q, kj].sum() for q in qi]) for kj in want_members]
                         for qi in want_members])
        np.testing.assert_allclose(col.pattern[h], want, atol=1e-6)
    assert col.heads == [(1, 2), (0, 1)]


def test_logit_lens_frame_by_hand():
    """Row ``(layer, pos)`` of the frame reads ``probs[layer + 1, pos]``: layer -1 is the
    embeddings, the top word is the candidate of highest probability, the answer's probability
    is its own column (NaN for an answer outside the candidates). Fails with the layers not
    shifted, the top probability taken as the answer's, or the answer column from index 0."""
    probs = torch.tensor([[[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]],
                          [[0.6, 0.1, 0.3], [0.2, 0.2, 0.6]]])
    lens = LogitLens(probs, ["cat", "dog", "cow"], ["x", "y"], ["image", "final"], None, "cow")
    np.testing.assert_array_equal(lens.top_words(), [[1, 0], [0, 2]])
    frame = lens.to_frame()
    assert frame[["layer", "position", "token", "group", "top_word"]].values.tolist() == [
        [-1, 0, "x", "image", "dog"], [-1, 1, "y", "final", "cat"],
        [0, 0, "x", "image", "cat"], [0, 1, "y", "final", "cow"]]
    np.testing.assert_allclose(frame.top_prob, [0.7, 0.5, 0.6, 0.6])
    np.testing.assert_allclose(frame.answer_prob, [0.2, 0.2, 0.3, 0.6])
    unknown = LogitLens(probs, ["cat", "dog", "cow"], ["x", "y"], ["image", "final"], None,
                        "owl").to_frame()
    assert unknown.answer_prob.isna().all()


def test_logit_lens_plot_shows_each_cells_top_word_at_layer_plus_one(toy):
    """Panel ``layer`` of the patch grid is ``grid.fill(top[layer + 1])`` (``-1`` = the
    embeddings) and the text strip's column ``j`` is the top words of the last ``max_text``
    text tokens at the j-th shown layer. Fails with ``top[layer]``, the strip untransposed, or
    the first text tokens instead of the last."""
    model, inp = toy
    one = inp.select(0)
    n, c = one.shape[1], 3
    probs = torch.rand(3, n, c, generator=torch.Generator().manual_seed(0))
    groups = ["image" if p in one.positions("image", 0).tolist() else "question"
              for p in range(n)]
    lens = LogitLens(probs, ["a", "b", "c"], [f"t{i}" for i in range(n)], groups, one)
    fig = lens.plot(layers=[1, -1], max_text=3)
    top = probs.argmax(-1).numpy()
    (grid,) = image_grids(one)
    for ax, layer in zip(fig.axes[:2], [1, -1], strict=True):
        shown = ax.get_images()[-1].get_array()
        np.testing.assert_array_equal(shown, grid.fill(top[layer + 1].astype(float)))
    text = [p for p in range(n) if groups[p] != "image"][-3:]
    strip = fig.axes[2]
    np.testing.assert_array_equal(strip.get_images()[0].get_array(), top[[2, 0]][:, text].T)
    assert [t.get_text() for t in strip.get_yticklabels()] == [f"t{p}" for p in text]


def test_example_figure_attention_panel_opacity_and_title_by_hand():
    """Each attention panel's overlay has opacity ``0.15 + 0.75 * a / max(a)`` (NaN as 0) over
    a grey copy of the picture, and its title gives the head, ``Σ`` and the maximum. Fails with
    the opacity not normalised by the maximum, the normalisation by the sum, or the overlay on
    the colour picture."""
    arr = (np.arange(4 * 6 * 3).reshape(4, 6, 3) % 251).astype(np.uint8)
    att = np.array([[1.0, 2.0], [np.nan, 4.0]])
    fig = example_figure(ExampleView(Image.fromarray(arr), "cat", "dog", {"L1H2": att}))
    ax = fig.axes[1]
    grey, over = ax.get_images()
    np.testing.assert_allclose(grey.get_array(), arr.mean(-1))
    np.testing.assert_allclose(over.get_array()[..., 3],
                               0.15 + 0.75 * np.array([[0.25, 0.5], [0.0, 1.0]]))
    assert ax.get_title() == "L1H2  (Σ=7.00, max=4)"
    assert fig.axes[0].get_images()[0].get_array().shape == (4, 6, 3)
    assert "✗" in fig.get_suptitle()
