"""The fit accumulated over chunks of masks is the one-shot fit (fit_linear / fit_pooled)."""

from __future__ import annotations

import pytest
import torch

import lvlm_lens.attribution.chunked_fit as chunked
from lvlm_lens.attribution.chunked_fit import (
    accumulate,
    fit_each,
    fit_pooled_chunked,
)
from lvlm_lens.attribution.mask_source import MaskSource
from lvlm_lens.attribution.regression import fit_linear, fit_pooled, sample_masks

L, H, N, RATE, SEED = 4, 8, 700, 0.2, 3


def test_accumulator_known_answer(monkeypatch):
    """Masks [1,0], [1,1], [0,1]; group 0 holds masks 0 and 1, group 1 masks 1 and 2; by hand:
    counts (2, 2), sums (2,1) and (1,2), Σ w x xᵀ with w = (1, 2, 1) is [[3,2],[2,3]], Σ x r
    is (3, 5), and the per-group centred Gram matrix [[3,2],[2,3]] - ((2,1)(2,1)ᵀ +
    (1,2)(1,2)ᵀ)/2 = [[.5,0],[0,.5]]. One row per chunk: the sums cross chunks."""
    monkeypatch.setattr(chunked, "FIT_CHUNK", 2)
    masks = torch.tensor([[[1, 0]], [[1, 1]], [[0, 1]]], dtype=torch.bool)
    members = torch.tensor([[1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    resid = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    (s,) = accumulate(MaskSource.from_tensor(masks), [(members, resid)])
    f64 = dict(dtype=torch.float64)
    assert torch.equal(s.counts, torch.tensor([2.0, 2.0], **f64))
    assert torch.equal(s.sums, torch.tensor([[2.0, 1.0], [1.0, 2.0]], **f64))
    assert torch.equal(s.gram, torch.tensor([[3.0, 2.0], [2.0, 3.0]], **f64))
    assert torch.equal(s.xr, torch.tensor([[3.0], [5.0]], **f64))
    assert torch.equal(s.centred_gram(), torch.tensor([[0.5, 0.0], [0.0, 0.5]], **f64))


def known_data(n_examples=3):
    """Planted coefficients (a different scale per example), a known intercept, noise."""
    masks = sample_masks(N, L, H, rate=RATE, seed=SEED)
    gen = torch.Generator().manual_seed(1)
    beta = torch.randn(L * H, generator=gen, dtype=torch.float64)
    x = masks.flatten(1).double()
    ys = [5 + e + x @ beta * (1 + 0.1 * e)
          + 0.3 * torch.randn(N, generator=gen, dtype=torch.float64) for e in range(n_examples)]
    return masks, torch.stack(ys)  # fmt: skip


def assert_same_fit(a, b, tol):
    torch.testing.assert_close(a.coef, b.coef, atol=tol, rtol=0)
    for name in ("intercept", "alpha", "pearson_r", "r2"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), abs=tol, rel=0), name
    assert (a.n_train, a.n_test, a.method) == (b.n_train, b.n_test, b.method)
    for name in ("alphas", "val_mse", "example_intercepts"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            torch.testing.assert_close(x, y, atol=tol, rtol=1e-12)


@pytest.mark.parametrize("method, alphas", [("ridge", None), ("ridge", [0.3]), ("ols", None),
                                            ("lasso", None), ("lasso", [0.05])])  # fmt: skip
@pytest.mark.parametrize("chunk", [64, 700])
def test_accumulated_fit_is_the_one_shot_fit(method, alphas, chunk, monkeypatch):
    monkeypatch.setattr(chunked, "FIT_CHUNK", chunk * L * H)  # chunks of `chunk` masks
    masks, ys = known_data()
    src = MaskSource(N, L, H, RATE, SEED, chunk_size=50)
    kw = dict(method=method, alphas=alphas, holdout=0.2, seed=5)
    each = fit_each(src, ys, **kw)
    assert len(each) == 3
    for e, fit in enumerate(each):
        assert_same_fit(fit, fit_linear(masks, ys[e], **kw), 1e-8)
    pooled = fit_pooled_chunked(src, ys, **kw)
    assert_same_fit(pooled, fit_pooled([masks] * 3, list(ys), **kw), 1e-8)
    assert pooled.example_intercepts.shape == (3,)


def test_masks_in_memory_fit_the_same():
    masks, ys = known_data(2)
    drawn = fit_each(MaskSource(N, L, H, RATE, SEED), ys)
    given = fit_each(MaskSource.from_tensor(masks, chunk_size=7), ys)
    for a, b in zip(drawn, given, strict=True):
        assert torch.equal(a.coef, b.coef)


def test_bad_targets_and_too_few_masks_are_refused():
    src = MaskSource(N, L, H, RATE, SEED)
    with pytest.raises(ValueError, match="targets must be finite"):
        fit_each(src, torch.zeros(2, N - 1))
    with pytest.raises(ValueError, match="targets must be finite"):
        fit_each(src, torch.full((1, N), float("nan")))
    small = MaskSource(20, L, H, RATE, SEED)
    with pytest.raises(ValueError, match="ols needs >= 33 training masks"):
        fit_each(small, torch.zeros(1, 20), method="ols")

