"""The analysis figures cell for cell: a layer x head heatmap puts ``scores[l, h]`` at row ``l``,
column ``h`` with its colour limits and outlines where asked; bars, bands, separators and rank
labels sit at the coordinates of the values they show. Each test names the wrong variant it was
checked against (planted, seen to fail, reverted)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lvlm_lens.attribution.curves import Curves, RandomBand
from lvlm_lens.viz import bar_plot, head_heatmap, heatmaps, line_plot, similarity_matrix
from lvlm_lens.viz.figures import importance_figure
from lvlm_lens.viz.plots import PALETTE


def _ticks(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def test_head_heatmap_cells_colour_limits_and_marks_by_hand():
    """Row ``l``, column ``h`` of the image is ``scores[l, h]`` (NaN masked); signed values get
    the diverging map over ``(-max|s|, max|s|)``, non-negative ones the sequential map up to
    their maximum; a marked ``(layer, head)`` is the unit square centred on column ``head``,
    row ``layer``. Fails with the scores transposed, the mark at ``(layer - .5, head - .5)``,
    ``or`` for the both-signs test, the colour limit from the signed maximum or ``vmax``
    ignored."""
    s = np.array([[1.0, -2.0, np.nan], [0.5, 4.0, -1.0]])  # 2 layers, 3 heads
    fig = head_heatmap(torch.tensor(s), mark=[(1, 2), (0, 1)], title="t")
    ax = fig.axes[0]
    (im,) = ax.get_images()
    arr = im.get_array()
    np.testing.assert_array_equal(arr.mask, np.isnan(s))
    np.testing.assert_array_equal(arr.filled(0), np.nan_to_num(s))
    assert im.get_clim() == (-4.0, 4.0) and im.get_cmap().name.startswith("RdBu_r")
    assert [(p.get_xy(), p.get_width(), p.get_height()) for p in ax.patches] == [
        ((1.5, 0.5), 1, 1), ((0.5, -0.5), 1, 1)]
    assert list(ax.get_xticks()) == [0, 1, 2] and list(ax.get_yticks()) == [0, 1]
    assert ax.get_title() == "t" and ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"

    pos = np.array([[0.5, 3.0], [2.0, np.nan]])  # one sign: sequential up to the maximum
    (im,) = head_heatmap(pos).axes[0].get_images()
    assert im.get_cmap().name.startswith("viridis") and im.get_clim()[1] == 3.0
    (im,) = head_heatmap(-pos).axes[0].get_images()  # all negative: |s| sets the limit
    assert im.get_clim()[1] == 3.0
    (im,) = head_heatmap(s, vmax=2.0).axes[0].get_images()
    assert im.get_clim() == (-2.0, 2.0)
    (im,) = head_heatmap(pos, signed=True).axes[0].get_images()
    assert im.get_clim() == (-3.0, 3.0)
    (im,) = head_heatmap(np.full((2, 2), np.nan)).axes[0].get_images()
    assert im.get_clim()[1] == 1.0
    ax = head_heatmap(s, xlabels=["a", "b", "c"], xlabel="group").axes[0]
    assert _ticks(ax.xaxis) == ["a", "b", "c"] and ax.get_xlabel() == "group"
    with pytest.raises(ValueError, match=r"\[n_layers, n_heads\].*\(3,\)"):
        head_heatmap(np.zeros(3))


def test_heatmaps_share_one_scale_only_when_asked_and_mark_each_panel():
    """Panel ``name`` shows ``maps[name]`` with ``marks[name]`` outlined; with ``shared_scale``
    every panel's limit is the largest ``|value|`` of all maps, else each its own. Fails with
    the marks of one panel on all, the shared limit from the first map or the scale shared
    always."""
    a, b = np.array([[1.0, -3.0]]), np.array([[-6.0, 2.0]])
    fig = heatmaps({"a": a, "b": b}, marks={"b": [(0, 1)]}, shared_scale=True)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == ["a", "b"]
    assert [ax.get_images()[0].get_clim() for ax in panels] == [(-6.0, 6.0), (-6.0, 6.0)]
    assert [len(ax.patches) for ax in panels] == [0, 1]
    np.testing.assert_array_equal(panels[1].get_images()[0].get_array(), b)
    own = [ax for ax in heatmaps({"a": a, "b": b}).axes if ax.get_images()]
    assert [ax.get_images()[0].get_clim() for ax in own] == [(-3.0, 3.0), (-6.0, 6.0)]


def test_similarity_matrix_limits_without_the_diagonal_and_block_separators():
    """The colour limit is the largest off-diagonal ``|value|`` (the diagonal of ones would hide
    everything else); blocks of equal labels are split by lines at ``start - 0.5`` and labelled
    at their middle. Fails with the diagonal included, separators at ``start`` or the label at
    the block's first row."""
    m = np.eye(5)
    m[0, 3] = m[3, 0] = -0.5
    m[1, 2] = 0.25
    fig = similarity_matrix(m, ["a", "a", "b", "b", "b"])
    ax = fig.axes[0]
    (im,) = ax.get_images()
    assert im.get_clim() == (-0.5, 0.5)
    lines = [(tuple(ln.get_xdata()), tuple(ln.get_ydata())) for ln in ax.lines]
    assert ((0, 1), (1.5, 1.5)) in lines and ((1.5, 1.5), (0, 1)) in lines and len(lines) == 2
    assert list(ax.get_xticks()) == [0.5, 3.0] == list(ax.get_yticks())
    assert _ticks(ax.xaxis) == ["a", "b"] == _ticks(ax.yaxis)
    (im,) = similarity_matrix(np.ones((1, 1))).axes[0].get_images()
    assert im.get_clim() == (-1.0, 1.0)


def test_bar_plot_heights_and_error_bars_by_hand():
    """Bar ``i`` stands at ``x = i`` with height ``mean[i]`` and an error bar from ``low[i]``
    to ``high[i]``; a bound on the wrong side of the mean is clipped to the mean. Fails with
    the error bar as ``[low, high]`` (not distances from the mean), low and high swapped or
    no clipping."""
    frame = pd.DataFrame({"name": ["p", "q", "r"], "mean": [1.0, -2.0, 3.0],
                          "low": [0.0, -3.0, 4.0], "high": [2.0, -1.5, 5.0]})
    ax = bar_plot(frame, "name", title="bars").axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == [1.0, -2.0, 3.0]
    assert [b.get_x() + b.get_width() / 2 for b in bars] == [0, 1, 2]
    assert [b.get_facecolor()[:3] for b in bars] == [
        tuple(int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)) for c in PALETTE[:3]]
    (container,) = [c for c in ax.containers if hasattr(c, "lines")]
    (segs,) = [lc.get_segments() for lc in container.lines[2]]
    assert [tuple(map(tuple, s)) for s in segs] == [
        ((0, 0), (0, 2)), ((1, -3), (1, -1.5)), ((2, 3), (2, 5))]
    assert _ticks(ax.xaxis) == ["p", "q", "r"] and ax.get_ylabel() == "mean"
    plain = bar_plot(frame[["name", "mean"]], "name").axes[0]
    assert not [c for c in plain.containers if hasattr(c, "lines")]


def test_line_plot_sorts_each_hue_and_shades_its_band():
    """Each ``hue`` value is one line through its rows sorted by ``x``, over a band from ``low``
    to ``high`` at the same ``x``; ``panels`` gives one titled axes per value, the y label on the
    first only. Fails without the sort, with the band from ``mean`` (not ``low``) to ``high``
    or with ``panels`` ignored (one panel)."""
    frame = pd.DataFrame({"layer": [2, 0, 1, 0, 1, 2], "mean": [3.0, 1.0, 2.0, 5.0, 4.0, 6.0],
                          "low": [2.5, 0.5, 1.5, 4.5, 3.5, 5.5],
                          "high": [3.5, 1.5, 2.5, 5.5, 4.5, 6.5],
                          "edge": ["a", "a", "a", "b", "b", "b"]})
    ax = line_plot(frame, "layer", hue="edge", zero_line=False).axes[0]
    assert [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines] == [
        ([0, 1, 2], [1.0, 2.0, 3.0]), ([0, 1, 2], [5.0, 4.0, 6.0])]
    for band, (lo, hi) in zip(ax.collections, [([0.5, 1.5, 2.5], [1.5, 2.5, 3.5]),
                                                ([4.5, 3.5, 5.5], [5.5, 4.5, 6.5])], strict=True):
        v = band.get_paths()[0].vertices
        pts = {(float(x), float(y)) for x, y in v}
        assert pts == set(zip([0.0, 1, 2], lo, strict=True)) | set(zip([0.0, 1, 2], hi,
                                                                        strict=True))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    fig = line_plot(frame, "layer", panels="edge", ylabel="effect")
    shown = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in shown] == ["a", "b"]
    assert [a.get_ylabel() for a in shown] == ["effect", ""]
    assert [list(ln.get_ydata()) for ln in shown[1].lines[:1]] == [[5.0, 4.0, 6.0]]


def test_importance_figure_numbers_the_top_heads_at_their_cells():
    """Rank ``i`` (1-based) is written at ``x = head, y = layer`` of the i-th top head, in white
    on a cell darker than half the colour limit; the limit is ``max|imp|`` both ways. Fails with
    the rank at ``(layer, head)``, ranks from 0, the colour rule inverted or an unsigned limit."""
    imp = np.zeros((3, 4))
    imp[2, 1], imp[0, 3], imp[1, 0] = 4.0, -1.0, np.nan
    ax = importance_figure(imp, "imp", [(2, 1), (0, 3)]).axes[0]
    texts = [(t.get_position(), t.get_text(), t.get_color()) for t in ax.texts]
    assert texts == [((1, 2), "1", "w"), ((3, 0), "2", "k")]
    (im,) = ax.get_images()
    assert im.get_clim() == (-4.0, 4.0) and ax.get_title() == "imp"
    np.testing.assert_array_equal(im.get_array(), imp)


def test_curves_figure_draws_each_curve_and_the_random_band_at_their_ks():
    """Both panels draw each ranking's curve through ``(ks, values)`` and the random band
    between its lowest and highest quantile rows, the median dashed. Fails with the band
    between rows 0 and 1 (not the extreme levels), faithfulness drawn in both panels or the
    median row taken by position."""
    from lvlm_lens.viz.figures import curves_figure

    ks = torch.tensor([0, 1, 4])
    cur = Curves(ks, torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 0.25, 1.0]),
                 torch.zeros(3), torch.zeros(3), 1.0, 0.0)
    qs = (0.5, 0.95, 0.05)  # not sorted: the band is found by level
    band = RandomBand(ks, qs, torch.tensor([[0.2, 0.3, 1.0], [0.4, 0.6, 1.0], [0.0, 0.1, 1.0]]),
                      torch.tensor([[0.1, 0.2, 1.0], [0.3, 0.5, 1.0], [0.0, 0.0, 1.0]]),
                      torch.zeros(2, 3), torch.zeros(2, 3))
    fig = curves_figure({"head attribution": cur}, band, 4)
    panels = [ax for ax in fig.axes if ax.get_lines()]
    for ax, want, q in zip(panels, ([0.0, 0.5, 1.0], [0.0, 0.25, 1.0]),
                           (band.faithfulness, band.completeness), strict=True):
        curves = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()))
                  for ln in ax.get_lines()}
        assert curves["head attribution"] == ([0, 1, 4], want)
        assert curves["random (median)"] == ([0, 1, 4], q[0].tolist())
        (poly,) = ax.collections[:1]
        pts = {(round(float(x), 6), round(float(y), 6)) for x, y in poly.get_paths()[0].vertices}
        want_pts = {(float(k), round(float(v), 6)) for k, v in zip(ks, q[2], strict=True)}
        want_pts |= {(float(k), round(float(v), 6)) for k, v in zip(ks, q[1], strict=True)}
        assert pts == want_pts
        assert poly.get_label() == "random (5%–95%)"
