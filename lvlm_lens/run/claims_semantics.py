"""Claim 5 on a grid with shared examples: class labels permuted within looks.

The statistic is the one of :func:`~lvlm_lens.analysis.semantics.semantic_similarity`: per
example, the mean similarity of its head-attribution vector to examples of the **same class in
another look** minus that to examples of the **same look and another class**, averaged over
examples. Its sign-flip test treats the examples' differences as independent, but every example
is a partner of many others (and jittered images of one class x look cell are alike), so the
differences are not. :func:`within_look_test` keeps the pairs as they are and permutes the
labels instead: within each look the classes of the cells are relabelled at random (all images
of a cell move together), which leaves the look structure and every cell intact. Under "the
class has no effect that carries across looks" each relabelling is as likely as the observed
one, so the share of relabellings with a statistic at least as large is an exact p-value.
The same with looks relabelled within classes tests for an effect of the look.

:func:`semantic_grid` draws the science toy v2's grid: every class in every look of
:data:`V2_LOOKS`, several jittered images per cell, the looks differing only in attributes the
toy is never asked about (fill, texture, position).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from lvlm_lens.analysis.semantics import attribution_vectors, similarity
from lvlm_lens.data import render_example
from lvlm_lens.data.synthetic import CLASSES, SyntheticExample

#: Looks of the v1 semantic-vs-appearance grid (claims.py): every class is drawn in each.
LOOKS = (
    {"colour": "red", "size": "large", "fill": "filled", "texture": "plain",
     "background": "white", "position": "center"},
    {"colour": "blue", "size": "small", "fill": "outline", "texture": "plain",
     "background": "gray", "position": "left"},
    {"colour": "yellow", "size": "large", "fill": "filled", "texture": "stripes",
     "background": "noise", "position": "right"},
)  # fmt: skip
#: Attributes the v2 grid holds fixed: every image of the grid has these (the toy is asked
#: about colour, size and background, so they must not tell looks apart).
V2_FIXED = {"colour": "blue", "size": "large", "background": "white"}
#: Looks of the v2 grid: they differ only in attributes the toy is never asked about.
V2_LOOKS: tuple[dict[str, str], ...] = (
    {"fill": "filled", "texture": "plain", "position": "center"},
    {"fill": "outline", "texture": "plain", "position": "left"},
    {"fill": "filled", "texture": "stripes", "position": "right"},
)


def semantic_grid(
    per_cell: int, seed: int, looks: Sequence[dict[str, str]] = V2_LOOKS
) -> list[tuple[str, int, SyntheticExample]]:
    """``(class, look index, example)`` for every class x look cell, ``per_cell`` images each.

    The images of one cell differ only by the renderer's jitter (exact size, offset, colour
    shade, background shade), drawn from one stream seeded by ``seed``.
    """
    if per_cell < 1:
        raise ValueError(f"per_cell must be >= 1, got {per_cell}")
    rng = np.random.default_rng(seed)
    return [
        (c, k, render_example(c, V2_FIXED | dict(look), rng))
        for k, look in enumerate(looks)
        for c in CLASSES
        for _ in range(per_cell)
    ]


def _codes(labels: Sequence[Hashable]) -> np.ndarray:
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(x, len(index)) for x in labels], dtype=np.int64)


def _statistics(sim: np.ndarray, classes: np.ndarray, looks: np.ndarray) -> np.ndarray:
    """``same class - same look`` for each row of ``classes`` ``[P, n]`` (``looks`` ``[P, n]``
    or ``[n]``): the mean over examples with partners of both kinds."""
    looks = np.broadcast_to(looks, classes.shape)
    same_c = classes[:, :, None] == classes[:, None, :]
    same_l = looks[:, :, None] == looks[:, None, :]
    (ta, na), (tb, nb) = (
        (np.einsum("pij,ij->pi", pairs, sim), pairs.sum(-1))
        for pairs in (same_c & ~same_l, ~same_c & same_l)
    )
    both = (na > 0) & (nb > 0)
    diff = np.where(both, ta / np.maximum(na, 1) - tb / np.maximum(nb, 1), 0.0)
    return diff.sum(-1) / np.maximum(both.sum(-1), 1)


def _relabel(
    labels: np.ndarray, within: np.ndarray, n_perm: int, rng: np.random.Generator
) -> np.ndarray:
    """``[n_perm, n]``: inside each group of ``within``, the distinct ``labels`` permuted
    (examples that share a label and a group keep sharing one)."""
    out = np.tile(labels, (n_perm, 1))
    for g in np.unique(within):
        rows = np.flatnonzero(within == g)
        present, slot = np.unique(labels[rows], return_inverse=True)
        mapping = rng.permuted(np.tile(np.arange(len(present)), (n_perm, 1)), axis=1)
        out[:, rows] = present[mapping[:, slot]]
    return out


def within_look_test(
    vectors: Any,
    classes: Sequence[Hashable],
    looks: Sequence[Hashable],
    *,
    method: str = "cosine",
    center: bool = True,
    n_perm: int = 10000,
    seed: int = 0,
    chunk: int = 500,
) -> dict[str, Any]:
    """The claim-5 statistic and its permutation p-values on a class x look design.

    Args:
        vectors: Per-example attribution vectors ``[n, ...]`` or an ``AttributionResult``.
        classes: Class of each example.
        looks: Look of each example (images of one class and look form a cell).
        method: Similarity (:func:`~lvlm_lens.analysis.semantics.similarity`).
        center: Subtract the mean vector over examples first.
        n_perm: Relabellings per test.
        seed: Seed of the relabellings.
        chunk: Relabellings evaluated at once (memory ``chunk * n * n`` booleans).

    Returns:
        ``value`` (same class - same look, as ``semantic_similarity``'s difference),
        ``p_value`` (one-sided, classes relabelled within looks: is the value larger than
        without a class effect that carries across looks), ``look_p_value`` (one-sided, looks
        relabelled within classes: is it smaller than without a look effect), ``n``,
        ``n_cells`` and ``n_perm``.
    """
    if hasattr(vectors, "importance"):
        vectors = attribution_vectors(vectors)
    n = len(vectors)
    if len(classes) != n or len(looks) != n:
        raise ValueError(f"within_look_test: need one class and one look per example ({n}), "
                         f"got {len(classes)} and {len(looks)}")  # fmt: skip
    if n_perm < 1:
        raise ValueError(f"within_look_test: n_perm must be >= 1, got {n_perm}")
    c, k = _codes(classes), _codes(looks)
    if len(np.unique(k)) < 2 or len(np.unique(c)) < 2:
        raise ValueError("within_look_test: the design needs at least two classes and two looks")
    sim = similarity(vectors, method, center)
    observed = float(_statistics(sim, c[None], k)[0])
    rng = np.random.default_rng(seed)
    class_stats, look_stats = [], []
    for start in range(0, n_perm, chunk):
        m = min(chunk, n_perm - start)
        class_stats.append(_statistics(sim, _relabel(c, k, m, rng), k))
        looks_perm = _relabel(k, c, m, rng)
        look_stats.append(_statistics(sim, np.tile(c, (m, 1)), looks_perm))
    tol = 1e-12 * max(1.0, abs(observed))
    by_class, by_look = np.concatenate(class_stats), np.concatenate(look_stats)
    return {
        "value": observed,
        "p_value": float((1 + np.sum(by_class >= observed - tol)) / (1 + n_perm)),
        "look_p_value": float((1 + np.sum(by_look <= observed + tol)) / (1 + n_perm)),
        "n": n,
        "n_cells": len(set(zip(c.tolist(), k.tolist(), strict=True))),
        "n_perm": n_perm,
    }
