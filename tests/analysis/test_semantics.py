"""Semantics vs appearance: a planted class-dependent head set is recovered."""

from __future__ import annotations

import numpy as np
import pytest

from lvlm_lens.analysis import class_heads, semantic_similarity

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
