"""Semantics vs appearance: a planted class-dependent head set is recovered."""

from __future__ import annotations

import numpy as np
import pytest

from lvlm_lens.analysis import class_heads, semantic_similarity
from lvlm_lens.analysis.semantics import pair_kinds, similarity

N_LAYERS, N_HEADS = 4, 8


def planted(by: str, seed: int = 0):
    """Crossed design: 4 classes x 4 appearances x 2 draws. Every example uses a shared
    circuit; ``by`` (class or appearance) decides which extra heads light up."""
    rng = np.random.default_rng(seed)
    classes, appearances, vectors = [], [], []
    shared = np.zeros(N_LAYERS * N_HEADS)
    shared[[3, 9]] = 5.0
    extra = {k: rng.choice(np.arange(12, 32), 3, replace=False) for k in range(4)}
    for c in range(4):
        for a in range(4):
            for _ in range(2):
                v = shared + rng.normal(0, 0.3, shared.shape)
                v[extra[c if by == "class" else a]] += 2.0
                vectors.append(v.reshape(N_LAYERS, N_HEADS))
                classes.append(f"class{c}")
                appearances.append(f"look{a}")
    return np.stack(vectors), classes, appearances, extra


@pytest.mark.parametrize("method", ["cosine", "spearman"])
def test_planted_class_heads_are_recovered(method):
    vectors, classes, appearances, extra = planted("class")
    res = semantic_similarity(vectors, classes, appearances, method=method, n_perm=2000)
    assert res.difference.value > 0.3 and res.difference.low > 0
    assert res.difference.p_value < 0.01
    assert res.kinds["same class"].value > res.kinds["different"].value + 0.3
    heads = class_heads(vectors, classes, k=3)
    for c, planted_set in extra.items():
        want = {divmod(int(i), N_HEADS) for i in planted_set}
        assert set(heads[f"class{c}"]) == want
    frame = res.to_frame()
    assert list(frame.kind) == ["same class", "same appearance", "different",
                                "same class - same appearance"]
    assert res.plot().__class__.__name__ == "Figure"


def test_appearance_driven_heads_are_not_called_semantic():
    vectors, classes, appearances, _ = planted("appearance")
    res = semantic_similarity(vectors, classes, appearances, n_perm=2000)
    assert res.difference.value < -0.3 and res.difference.high < 0
    assert res.difference.p_value > 0.5


def test_centering_removes_the_shared_circuit():
    vectors, classes, appearances, _ = planted("class")
    raw = semantic_similarity(vectors, classes, appearances, center=False, n_perm=100)
    # without centring the shared heads make every pair look alike
    assert raw.kinds["different"].value > 0.5


def test_a_design_without_same_appearance_pairs_is_refused():
    vectors, classes, _, _ = planted("class")
    with pytest.raises(ValueError, match="same appearance"):
        semantic_similarity(vectors, classes, [str(i) for i in range(len(classes))])


def _cosines(x: np.ndarray) -> np.ndarray:
    """Cosine of every pair of rows by a loop (0 against a zero row)."""
    n = len(x)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d = np.sqrt((x[i] ** 2).sum() * (x[j] ** 2).sum())
            out[i, j] = (x[i] * x[j]).sum() / d if d > 0 else 0.0
    return out


def test_similarity_cosine_and_spearman_by_hand():
    """Cosine of rows (0 for a zero row), after subtracting the mean row unless ``center`` is
    off; spearman = cosine of each row's ranks (ties averaged) minus their row mean: ranks
    (0, 2, 1) and (0, 1, 2) give 1/2, ties (1.5, 1.5, 0) against (0, 1, 2) give -sqrt(3)/2.
    Fails with the norm over examples, a zero row giving NaN, the centring skipped, the
    ranks taken over examples or not centred per row."""
    x = np.array([[3.0, 0, 4], [0, 5, 0], [6, 0, 8], [0, 0, 0]])
    np.testing.assert_allclose(similarity(x, center=False), [
        [1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(similarity(x), _cosines(x - x.mean(0)), atol=1e-12)
    r = np.array([[10.0, 30, 20], [1, 2, 5], [7, 7, 1]])
    np.testing.assert_allclose(similarity(r, "spearman", center=False), [
        [1, 0.5, 0], [0.5, 1, -np.sqrt(3) / 2], [0, -np.sqrt(3) / 2, 1]], atol=1e-12)
    with pytest.raises(ValueError, match="unknown method 'pearson'"):
        similarity(r, "pearson")


def test_pair_kinds_by_hand():
    """Classes (a, a, b, b) x appearances (x, y, x, y): pair (0, 1) is same class, (0, 2) same
    appearance, (0, 3) different, the diagonal empty. Fails with the kinds swapped."""
    kinds = pair_kinds(["a", "a", "b", "b"], ["x", "y", "x", "y"])
    sc, sa, d = "same class", "same appearance", "different"
    assert kinds.tolist() == [["", sc, sa, d], [sc, "", d, sa], [sa, d, "", sc],
                              [d, sa, sc, ""]]


def test_class_heads_are_the_largest_within_minus_outside_means_by_hand():
    """Rows a: (4, 0, 1, 0), (2, 0, 1, 0); b: (0, 2, 0, 0); c: (0, 0, 2, 2). Contrasts (within
    mean minus the others' mean): a (3, -1, 0, -1), b (-2, 2, -4/3, -2/3), c (-2, -2/3, 4/3, 2);
    top 2 each, as ``(layer, head)`` with 2 heads per layer, or from a ``[n, 1, 4]`` stack.
    Fails without the contrast (b's second head would be 0), with the smallest contrasts, or
    with the heads per layer read from the layer axis."""
    x = np.array([[4.0, 0, 1, 0], [2, 0, 1, 0], [0, 2, 0, 0], [0, 0, 2, 2]])
    classes = ["a", "a", "b", "c"]
    assert class_heads(x, classes, k=2, n_heads=2) == {
        "a": [(0, 0), (1, 0)], "b": [(0, 1), (1, 1)], "c": [(1, 1), (1, 0)]}
    assert class_heads(x.reshape(4, 1, 4), classes, k=2) == {
        "a": [(0, 0), (0, 2)], "b": [(0, 1), (0, 3)], "c": [(0, 3), (0, 2)]}
    assert class_heads(x, ["a"] * 4, k=1) == {"a": [0]}  # one class: its mean alone
