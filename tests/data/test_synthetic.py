"""Synthetic images are drawn as labelled: position, size, colour, fill, texture and background
of the drawn object match the record, for every value of every attribute."""

from __future__ import annotations

import numpy as np
import pytest

from lvlm_lens.data import BACKGROUNDS, CLASSES, COLOURS, POSITIONS, generate_dataset
from lvlm_lens.data.synthetic import FILLS, SIZES, TEXTURES, render_example

BASE = dict(colour="red", size="large", fill="filled", texture="plain", background="white",
            position="center")  # fmt: skip
SEEDS = range(4)


def draw(label: str, seed: int, **appearance: str):
    return render_example(label, {**BASE, **appearance}, np.random.default_rng(seed))


def margins(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Free pixels left, right, above and below the object."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return int(xs.min()), int(w - 1 - xs.max()), int(ys.min()), int(h - 1 - ys.max())


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        p = np.pad(out, 1)
        out = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return out


# the direction (dx, dy) each position moves the object away from the centre
SHIFT = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}


@pytest.mark.parametrize("position", POSITIONS)
def test_position(position):
    """Same seed, same shape and size: "left" moves the mask centroid left of the centred one
    (and not vertically), etc.; the object lies on its side of the image."""
    for label in CLASSES:
        for size in SIZES:
            for seed in SEEDS:
                ex = draw(label, seed, size=size, position=position)
                left, right, top, bottom = margins(ex.mask)
                if position == "center":
                    assert abs(left - right) <= 9 and abs(top - bottom) <= 9, (label, seed)
                    continue
                move = centroid(ex.mask) - centroid(draw(label, seed, size=size).mask)
                dx, dy = SHIFT[position]
                along, across = (move[0] * dx, move[1]) if dx else (move[1] * dy, move[0])
                assert along >= 2 and abs(across) < 0.5, (label, size, seed, move)
                near, far = {"left": (left, right), "right": (right, left),
                             "top": (top, bottom), "bottom": (bottom, top)}[position]  # fmt: skip
                assert near < far and near <= 10, (label, size, seed)


@pytest.mark.parametrize("label", CLASSES)
def test_size(label):
    """A large object spans more than 2 x the small half-extent range's top, a small one no more;
    and the same draw is at least 1.5 x larger in area."""
    limit = 2 * SIZES["small"][1]
    for fill in FILLS:
        for seed in SEEDS:
            small, large = (draw(label, seed, size=s, fill=fill).mask for s in ("small", "large"))
            extent = lambda m: max(np.ptp(np.nonzero(m)[0]), np.ptp(np.nonzero(m)[1])) + 1  # noqa: E731
            assert extent(small) <= limit < extent(large), (fill, seed)
            assert large.sum() >= 1.5 * small.sum()


@pytest.mark.parametrize("colour", COLOURS)
def test_colour(colour):
    """The median object pixel of a plain object is nearest to its named colour, on every
    background."""
    for background in BACKGROUNDS:
        for label in CLASSES:
            ex = draw(label, 0, colour=colour, background=background)
            median = np.median(np.asarray(ex.image)[ex.mask].astype(float), axis=0)
            nearest = min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - median).sum())
            assert nearest == colour, (background, label, median)


@pytest.mark.parametrize("label", CLASSES)
def test_fill(label):
    """An outline is part of the filled shape of the same draw and leaves its interior empty."""
    for size in SIZES:
        for seed in SEEDS:
            filled = draw(label, seed, size=size, fill="filled").mask
            outline = draw(label, seed, size=size, fill="outline").mask
            inside = erode(filled, 3 if size == "small" else 4)
            assert inside.sum() >= 4
            assert not (outline & ~filled).any()
            assert (outline & inside).sum() <= 0.05 * inside.sum(), (size, seed)
            assert outline.sum() <= 0.9 * filled.sum()


@pytest.mark.parametrize("texture", TEXTURES)
def test_texture(texture):
    """Inside the object: one colour (plain), a sparse second colour (dots, 12-30 %) or stripes of
    it (40-50 %)."""
    lo, hi = {"plain": (0.0, 0.02), "dots": (0.1, 0.33), "stripes": (0.35, 0.55)}[texture]
    for label in CLASSES:
        for seed in SEEDS:
            ex = draw(label, seed, texture=texture)
            pixels = np.asarray(ex.image)[erode(ex.mask, 1)]
            _, counts = np.unique(pixels, axis=0, return_counts=True)
            minority = 1 - counts.max() / counts.sum()
            assert lo <= minority <= hi, (label, seed, minority)


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_background(background):
    """Away from the object: white, a uniform gray, cream (red > blue), or per-pixel noise."""
    for label in CLASSES:
        for seed in SEEDS:
            ex = draw(label, seed, background=background)
            bg = np.asarray(ex.image)[~ex.mask].astype(float)
            far = np.asarray(ex.image)[[0, 0, -1, -1], [0, -1, 0, -1]].astype(float)
            if background == "noise":
                assert bg.std(0).min() > 10
                continue
            assert np.ptp(far, axis=0).max() <= 1  # the four corners agree
            r, g, b = far[0]
            if background == "white":
                assert min(r, g, b) >= 235 and max(r, g, b) - min(r, g, b) <= 1
            elif background == "gray":
                assert 165 <= min(r, g, b) and max(r, g, b) <= 205 and r == g == b
            else:
                assert r >= 230 and r - b >= 30, (r, g, b)


def test_generated_records_match_their_images():
    """Every example of a generated set is drawn as its record says (position, size,
    background), whatever the other attributes are."""
    for ex in generate_dataset(64, seed=11):
        a = ex.appearance
        left, right, top, bottom = margins(ex.mask)
        if a["position"] in SHIFT:
            near, far = {"left": (left, right), "right": (right, left),
                         "top": (top, bottom), "bottom": (bottom, top)}[a["position"]]  # fmt: skip
            assert near < far, a
        ys, xs = np.nonzero(ex.mask)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        assert (extent <= 2 * SIZES["small"][1]) == (a["size"] == "small"), a
        corner = np.asarray(ex.image)[0, 0].astype(int)
        if a["background"] == "white":
            assert corner.min() >= 235
        elif a["background"] == "cream":
            assert corner[0] - corner[2] >= 30
        elif a["background"] == "gray":
            assert corner.max() <= 205


def test_generate_from_rng_is_the_seeded_dataset_on_its_own_stream():
    """Public in ``lvlm_lens.data`` (the toy's training recipe draws its batches with it)."""
    from lvlm_lens.data import generate_from_rng

    ours = generate_from_rng(5, np.random.default_rng(3))
    theirs = generate_dataset(5, seed=3)
    assert [e.label for e in ours] == [e.label for e in theirs]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image))
               for a, b in zip(ours, theirs, strict=True))  # fmt: skip
