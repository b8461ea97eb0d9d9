"""Coordinates of the patch views pixel for pixel: the model's crop of the picture, grids filled
from sequence positions, overlays and outlines drawn on the right cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from lvlm_lens import HookedLVLM, synthetic_records, toy_checkpoint_path
from lvlm_lens.viz import image_grids
from lvlm_lens.viz.figures import ExampleView, _outline, example_figure
from lvlm_lens.viz.patches import ImageGrid, draw_overlay, model_view, query_position


def _picture(h: int, w: int) -> tuple[np.ndarray, Image.Image]:
    """An RGB picture whose every pixel is different (value = its index, per channel offset)."""
    arr = (np.arange(h * w * 3).reshape(h, w, 3) % 251).astype(np.uint8)
    return arr, Image.fromarray(arr)


@pytest.mark.parametrize(("h", "w", "top", "left"), [(6, 10, 0, 2), (10, 4, 3, 0), (6, 9, 0, 1),
                                                     (5, 5, 0, 0)])
def test_model_view_is_the_central_square_pixel_for_pixel(h, w, top, left):
    """The cropped view is ``arr[top : top + s, left : left + s]`` with ``s = min(h, w)`` and
    the offsets ``(w - s) // 2`` (columns) and ``(h - s) // 2`` (rows). Fails with the offsets
    swapped (a wide picture would be cut at its left edge), with the size of the longer side
    or with rounding up."""
    arr, pic = _picture(h, w)
    s = min(h, w)
    view = np.asarray(model_view(pic, ImageGrid("base", np.zeros((2, 2), int), crop=True)))
    np.testing.assert_array_equal(view, arr[top : top + s, left : left + s])
    whole = model_view(pic.convert("L"), ImageGrid("base", np.zeros((2, 2), int)))
    assert whole.mode == "RGB" and whole.size == (w, h)


def test_fill_puts_each_value_in_its_tokens_cell():
    """``fill`` reads ``values[positions[r, c]]`` (NaN for -1); fails if transposed, if -1
    indexes the last value or if the values are read in cell order."""
    grid = ImageGrid("base", np.array([[3, -1, 1], [0, 5, 2]]))
    values = np.arange(6) * 10.0
    np.testing.assert_array_equal(grid.fill(values), [[30, np.nan, 10], [0, 50, 20]])
    np.testing.assert_array_equal(grid.fill(torch.arange(6) * 10.0),
                                  [[30, np.nan, 10], [0, 50, 20]])


def test_image_grid_cells_hold_the_tokens_of_those_coordinates():
    """Each base-grid cell (r, c) holds the sequence position of the image token whose
    coordinates are (tile 0, row r, col c) (fails if rows and columns are swapped)."""
    model = HookedLVLM.from_pretrained(toy_checkpoint_path())
    recs = synthetic_records(2, seed=0)
    inp = model.prepare([r.image for r in recs], [r.prompt for r in recs])
    for i in range(2):
        (grid,) = image_grids(inp, i)
        coords = inp.image_coords[i].numpy()
        pos = inp.positions("image", i).numpy()
        for (tile, r, c), p in zip(coords, pos, strict=True):
            assert tile == 0 and grid.positions[r, c] == p
        n = inp.shape[1]
        assert query_position(inp, "final", i) == n - 1
        assert query_position(inp, -2, i) == n - 2
        assert query_position(inp, "image", i) == pos[-1]
    with pytest.raises(ValueError, match="out of range"):
        query_position(inp, inp.shape[1])


def test_draw_overlay_extent_opacity_and_outline_by_hand():
    """A 2 x 3 grid spans (0, 3) x (0, 2) with row 0 on top (extent ``(0, cols, rows, 0)``);
    each cell's opacity is ``0.1 + (alpha - 0.1) * (v - lo) / (hi - lo)`` (NaN cells as
    ``lo``); an outlined cell (r, c) is the unit square at x = c, y = r. Fails with the extent's
    rows / cols swapped, the outline at (r, c) or the opacity not scaled."""
    fig = Figure()
    ax = fig.subplots()
    values = np.array([[0.0, 1.0, 2.0], [4.0, np.nan, 3.0]])
    outline = np.array([[False, False, True], [True, False, False]])
    _, pic = _picture(8, 12)
    art = draw_overlay(ax, pic, values, alpha=0.5, outline=outline)
    under, over = ax.get_images()
    assert over is art and under.get_extent() == over.get_extent() == [0, 3, 2, 0]
    frac = np.array([[0.0, 0.25, 0.5], [1.0, 0.0, 0.75]])
    np.testing.assert_allclose(art.get_alpha(), 0.1 + 0.4 * frac)
    assert [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in ax.patches] == [
        (2, 0, 1, 1), (0, 1, 1, 1)]
    np.testing.assert_array_equal(art.get_array().mask, np.isnan(values))
    fixed = draw_overlay(fig.subplots(), pic, values, vmin=0.0, vmax=8.0, alpha=0.5)
    np.testing.assert_allclose(fixed.get_alpha(), 0.1 + 0.4 * np.nan_to_num(values) / 8)
    alone = draw_overlay(Figure().subplots(), None, values)
    assert alone.get_alpha() == 1.0 and alone.get_extent() == [0, 3, 2, 0]


def _segments(lines) -> set[tuple[tuple[float, float], tuple[float, float]]]:
    return {tuple(sorted(tuple(map(float, p)) for p in s)) for s in lines.get_segments()}


def test_outline_segments_are_the_cell_borders_in_pixels():
    """Cell (1, 2) of a 2 x 4 grid on a 40 x 20 picture (cells 10 x 10 pixels) is the square
    x 20-30, y 10-20: its four sides. Two adjacent cells share no inner border. In
    ``example_figure`` a 2 x 2 grid on that picture has cells 20 wide and 10 high. Fails with
    sx and sy swapped (also in ``example_figure``), the image extent swapped, rows and columns
    swapped or an off-by-one in the padded indices."""
    mask = np.zeros((2, 4), bool)
    mask[1, 2] = True
    want = {((20.0, 10.0), (30.0, 10.0)), ((20.0, 20.0), (30.0, 20.0)),
            ((20.0, 10.0), (20.0, 20.0)), ((30.0, 10.0), (30.0, 20.0))}
    assert _segments(_outline(mask, 10.0, 10.0)) == want
    mask[0, 2] = True  # the cell above: one 10 x 20 rectangle, 6 unit sides
    assert _segments(_outline(mask, 10.0, 5.0)) == {
        ((20.0, 0.0), (30.0, 0.0)), ((20.0, 10.0), (30.0, 10.0)), ((20.0, 0.0), (20.0, 5.0)),
        ((20.0, 5.0), (20.0, 10.0)), ((30.0, 0.0), (30.0, 5.0)), ((30.0, 5.0), (30.0, 10.0))}
    arr, pic = _picture(20, 40)  # a 2 x 2 grid on it: cells 20 wide, 10 high
    cell = np.array([[False, False], [False, True]])
    fig = example_figure(ExampleView(pic, "cat", "cat", {"L0H0": np.ones((2, 2))}, cell))
    first = fig.axes[0]
    np.testing.assert_array_equal(first.get_images()[0].get_array(), arr)
    assert first.get_images()[0].get_extent() == [0, 40, 20, 0]
    square = {((20.0, 10.0), (40.0, 10.0)), ((20.0, 20.0), (40.0, 20.0)),
              ((20.0, 10.0), (20.0, 20.0)), ((40.0, 10.0), (40.0, 20.0))}
    assert all(_segments(ax.collections[0]) == square for ax in fig.axes[:2])
