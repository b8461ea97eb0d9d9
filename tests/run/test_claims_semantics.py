"""Claim 5's within-look permutation test on constructed attribution vectors whose answer is
known by construction (no class effect, a planted class effect, a look effect only), and the
v2 grid it is run on."""

from __future__ import annotations

import numpy as np
import pytest

from lvlm_lens.analysis.semantics import semantic_similarity
from lvlm_lens.data.synthetic import CLASSES
from lvlm_lens.run.claims_semantics import (
    V2_FIXED,
    V2_LOOKS,
    _relabel,
    semantic_grid,
    within_look_test,
)


def _grid(seed, cls=0.0, look=1.0, cell=0.7, per=2, d=64):
    """8 classes x 3 looks x ``per`` vectors: class, look and cell (class x look) effects of the
    given sizes plus unit noise."""
    r = np.random.default_rng(seed)
    ce, le, xe = r.normal(size=(8, d)), r.normal(size=(3, d)), r.normal(size=(8, 3, d))
    rows = [(c, k) for k in range(3) for c in range(8) for _ in range(per)]
    v = np.stack([cls * ce[c] + look * le[k] + cell * xe[c, k] + r.normal(size=d)
                  for c, k in rows])  # fmt: skip
    return v, [c for c, _ in rows], [k for _, k in rows]


def _p_values(n_draws, **effects):
    out = []
    for s in range(n_draws):
        v, c, k = _grid(s, **effects)
        out.append(within_look_test(v, c, k, n_perm=200, seed=s))
    return out


def test_statistic_is_semantic_similaritys_difference():
    v, c, k = _grid(3, cls=0.5)
    got = within_look_test(v, c, k, n_perm=10)
    sem = semantic_similarity(v, c, k, n_boot=10, n_perm=10)
    assert got["value"] == pytest.approx(sem.difference.value, abs=1e-12)
    assert got["n"] == 48 and got["n_cells"] == 24 and got["n_perm"] == 10


def test_no_class_effect_gives_a_roughly_uniform_p():
    """Look and cell effects but no class effect: p is not small more often than chance."""
    p = np.array([r["p_value"] for r in _p_values(40)])
    assert (p <= 0.05).sum() <= 6  # 2 expected at alpha 0.05 over 40 null draws
    assert 0.35 <= p.mean() <= 0.65
    assert p.min() < 0.2 and p.max() > 0.8  # spread over [0, 1], not stuck at one end


def test_shared_examples_fool_the_sign_flip_test_but_not_this_one():
    """Jittered images of one cell are alike (a cell effect), with no class or look effect:
    the sign-flip test of per-example differences rejects far more often than its level; the
    permutation of whole cells within looks does not."""
    flips, perms = 0, 0
    for s in range(40):
        v, c, k = _grid(s, look=0.0, cell=1.5)
        sign_flip = semantic_similarity(v, c, k, n_boot=10, n_perm=2000, seed=s).difference
        flips += sign_flip.p_value <= 0.05
        perms += within_look_test(v, c, k, n_perm=200, seed=s)["p_value"] <= 0.05
    assert flips >= 8 and perms <= 5


def test_planted_class_effect_is_significant():
    for r in _p_values(5, cls=1.5, look=0.5):
        assert r["value"] > 0 and r["p_value"] <= 0.01


def test_look_effect_only_is_seen_by_the_look_test_not_the_class_test():
    results = _p_values(10, look=1.5, cell=0.0)
    assert all(r["look_p_value"] <= 0.01 and r["value"] < 0 for r in results)
    assert sum(r["p_value"] <= 0.05 for r in results) <= 2


def test_relabelling_moves_whole_cells_within_looks():
    labels = np.array([0, 0, 1, 1, 2, 0, 1, 2, 2])
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    perm = _relabel(labels, groups, 300, np.random.default_rng(0))
    for row in perm:
        for g in (0, 1):  # within a look, a one-to-one relabelling of its classes
            pairs = set(zip(labels[groups == g].tolist(), row[groups == g].tolist(), strict=True))
            assert sorted(a for a, _ in pairs) == sorted(b for _, b in pairs) == [0, 1, 2]
        assert row[0] == row[1] and row[2] == row[3] and row[7] == row[8]  # cells stay whole
    assert len({tuple(r) for r in perm}) == 36  # all 3! x 3! relabellings occur


def test_bad_designs_are_refused():
    v, c, k = _grid(0)
    with pytest.raises(ValueError, match="one class and one look"):
        within_look_test(v, c[:-1], k)
    with pytest.raises(ValueError, match="two classes and two looks"):
        within_look_test(v, c, [0] * len(c))
    with pytest.raises(ValueError, match="n_perm"):
        within_look_test(v, c, k, n_perm=0)


def test_v2_grid_varies_only_unqueried_attributes_between_looks():
    grid = semantic_grid(2, seed=5)
    assert len(grid) == len(CLASSES) * len(V2_LOOKS) * 2
    for c, k, ex in grid:
        assert ex.label == c
        assert {a: ex.appearance[a] for a in V2_FIXED} == V2_FIXED
        assert {a: ex.appearance[a] for a in V2_LOOKS[k]} == V2_LOOKS[k]
    varying = {a for look in V2_LOOKS for a, v in look.items() if v != V2_LOOKS[0][a]}
    assert varying <= {"fill", "texture", "position"}
    a, b = (np.asarray(ex.image) for _, _, ex in grid[:2])  # one cell: jittered, not copies
    assert grid[0][:2] == grid[1][:2] and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="per_cell"):
        semantic_grid(0, seed=5)
