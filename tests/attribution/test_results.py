"""AttributionResult: save/load round trip, rankings, CSV export, atomic writes."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

from lvlm_lens.attribution.regression import fit_linear, fit_pooled, sample_masks
from lvlm_lens.attribution.results import META_FILE, TENSORS_FILE, AttributionResult

L, H = 3, 4


def make(pooled=True, raw=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kw = {}
    if pooled:
        kw = dict(pooled_coef=torch.randn(L, H, generator=gen, dtype=torch.float64),
                  pooled_intercept=1.25, pooled_r=0.987654321, pooled_r2=math.nan)  # fmt: skip
    if raw:
        kw |= dict(
            masks=sample_masks(10, L, H, 0.3, seed), metrics=torch.randn(2, 10, generator=gen)
        )
    return AttributionResult(
        coef=torch.randn(2, L, H, generator=gen, dtype=torch.float64),
        intercepts=torch.tensor([0.5, -1.5], dtype=torch.float64),
        pearson_r=torch.tensor([0.99, 0.95], dtype=torch.float64),
        r2=torch.tensor([0.98, 0.9], dtype=torch.float64),
        options={
            "metric": "logit",
            "rate": 0.05,
            "n_masks": 10,
            "seed": seed,
            "scope": "text",
            "baseline": {"kind": "mean", "n": 3},
            "ks": [1, 2],
        },  # fmt: skip
        model_name="llava-hf/llava-1.5-7b-hf",
        example_ids=["cat.jpg", "dog.jpg"],
        **kw,
    )


def assert_same(a: AttributionResult, b: AttributionResult) -> None:
    for name in ("coef", "intercepts", "pearson_r", "r2", "pooled_coef", "masks", "metrics"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    for name in ("pooled_intercept", "pooled_r", "pooled_r2", "options", "model_name"):
        x, y = getattr(a, name), getattr(b, name)
        assert x == y or (math.isnan(x) and math.isnan(y)), name
    assert a.example_ids == b.example_ids


@pytest.mark.parametrize("full", [True, False])
def test_save_load_round_trip(tmp_path, full):
    result = make(pooled=full, raw=full)
    result.save(tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run")) == sorted([TENSORS_FILE, META_FILE])
    assert_same(result, AttributionResult.load(tmp_path / "run"))


def test_top_heads_and_importance():
    result = make(raw=False)
    result.coef[:] = 0.0
    result.coef[0, 2, 1], result.coef[0, 0, 3], result.coef[0, 1, 0] = -3.0, -2.0, 5.0
    result.coef[1, 1, 1] = -4.0
    result.pooled_coef = torch.zeros(L, H, dtype=torch.float64)
    result.pooled_coef[1, 2], result.pooled_coef[0, 0] = -1.0, -0.5
    assert result.top_heads(2) == [(1, 2), (0, 0)]
    assert result.top_heads(3)[2] == (0, 1)  # ties: layer-major order
    assert result.top_heads(2, example=0) == [(2, 1), (0, 3)]
    assert result.top_heads(1, example=0, pooled=True) == [(2, 1)]
    assert result.top_heads(2, pooled=False) == [(1, 1), (2, 1)]  # mean over examples
    assert result.top_heads(L * H, example=0)[-1] == (1, 0)  # most positive β last
    assert len(result.top_heads(100)) == L * H and result.top_heads(0) == []
    torch.testing.assert_close(result.importance, -result.coef)
    torch.testing.assert_close(result.pooled_importance, -result.pooled_coef)
    result.pooled_coef = None
    assert result.pooled_importance is None
    with pytest.raises(ValueError, match="pooled"):
        result.top_heads(3)


def test_interrupted_save_leaves_destination_untouched(tmp_path, monkeypatch):
    make(seed=0).save(tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in (TENSORS_FILE, META_FILE)}

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        make(seed=1).save(tmp_path)
    with pytest.raises(OSError):
        make(seed=1).save(tmp_path / "new")
    with pytest.raises(OSError):
        make(seed=1).to_csv(tmp_path / "heads.csv")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == sorted([TENSORS_FILE, META_FILE, "new"])
    assert os.listdir(tmp_path / "new") == []  # no partial or temporary file anywhere
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    assert_same(AttributionResult.load(tmp_path), make(seed=0))


def test_mismatched_files_refused(tmp_path):
    make(seed=0).save(tmp_path / "a")
    make(seed=1).save(tmp_path / "b")
    os.replace(tmp_path / "b" / META_FILE, tmp_path / "a" / META_FILE)
    with pytest.raises(ValueError, match="different saves"):
        AttributionResult.load(tmp_path / "a")


def test_inconsistent_shapes_rejected():
    result = make()
    with pytest.raises(ValueError, match="intercepts"):
        AttributionResult(result.coef, result.intercepts[:1], result.pearson_r, result.r2)
    with pytest.raises(ValueError, match="pooled_coef"):
        AttributionResult(result.coef, result.intercepts, result.pearson_r, result.r2, result.coef)
    with pytest.raises(ValueError, match="example_ids"):
        AttributionResult(result.coef, result.intercepts, result.pearson_r, result.r2,
                          example_ids=["a"])  # fmt: skip


def test_unserialisable_options(tmp_path):
    result = make()
    result.options["device"] = torch.device("cpu")
    with pytest.raises(TypeError, match="JSON"):
        result.save(tmp_path)
    assert os.listdir(tmp_path) == []


def test_to_csv(tmp_path):
    result = make()
    result.to_csv(tmp_path / "heads.csv")
    with open(tmp_path / "heads.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["layer", "head", "coef_cat.jpg", "coef_dog.jpg", "coef_pooled"]
    assert len(rows) == 1 + L * H
    layer, head, c0, c1, cp = rows[1 + 1 * H + 2]
    assert (int(layer), int(head)) == (1, 2)
    assert float(c0) == result.coef[0, 1, 2].item() and float(c1) == result.coef[1, 1, 2].item()
    assert float(cp) == result.pooled_coef[1, 2].item()
    make(pooled=False).to_csv(tmp_path / "b.csv")
    assert (tmp_path / "b.csv").read_text().splitlines()[
        0
    ] == "layer,head,coef_cat.jpg,coef_dog.jpg"


def test_from_fits(tmp_path):
    masks = [sample_masks(200, L, H, 0.2, seed=s) for s in range(2)]
    targets = [(m.double() * -torch.arange(L * H).reshape(L, H)).sum((1, 2)) for m in masks]
    fits = [fit_linear(m, t) for m, t in zip(masks, targets, strict=True)]
    pooled = fit_pooled(masks, targets)
    result = AttributionResult.from_fits(fits, pooled, options={"method": "ridge"}, model_name="m")
    assert result.coef.shape == (2, L, H) and result.intercepts.shape == (2,)
    assert result.pearson_r.min() > 0.99 and result.pooled_r > 0.99
    assert result.top_heads(3) == [(2, 3), (2, 2), (2, 1)]
    result.save(tmp_path)
    assert_same(result, AttributionResult.load(tmp_path))


def test_top_heads_puts_nan_scores_last():
    coef = torch.tensor([[[float("nan"), -1.0], [-3.0, 0.5]]])
    res = AttributionResult(coef=coef, intercepts=torch.zeros(1), pearson_r=torch.ones(1),
                            r2=torch.ones(1))
    assert res.top_heads(4, pooled=False) == [(1, 0), (0, 1), (1, 1), (0, 0)]


def test_single_example_ranks_by_its_own_fit():
    coef = torch.tensor([[[0.5, -1.0], [-3.0, 0.0]]])
    res = AttributionResult(coef=coef, intercepts=torch.zeros(1), pearson_r=torch.ones(1),
                            r2=torch.ones(1))
    assert res.top_heads(2) == [(1, 0), (0, 1)]


def test_pooled_fields_file_format_and_default_ids(tmp_path):
    masks = [sample_masks(200, L, H, 0.2, seed=s) for s in range(2)]
    targets = [(m.double() * -torch.arange(L * H).reshape(L, H)).sum((1, 2)) + 0.1 * torch.randn(
        200, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        for s, m in enumerate(masks)]  # fmt: skip
    fits = [fit_linear(m, t) for m, t in zip(masks, targets, strict=True)]
    pooled = fit_pooled(masks, targets)
    result = AttributionResult.from_fits(fits, pooled)
    assert result.pooled_intercept == pooled.intercept and result.pooled_r == pooled.pearson_r
    assert result.pooled_r2 == pooled.r2 and result.intercepts.dtype == torch.float64
    assert result.intercepts.tolist() == [f.intercept for f in fits]
    result.save(tmp_path / "new" / "nested")  # parents are created
    meta = json.loads((tmp_path / "new" / "nested" / META_FILE).read_text())
    assert meta["format"] == "lvlm_lens.attribution" and meta["version"] == 1
    result.to_csv(tmp_path / "ids.csv")
    header = (tmp_path / "ids.csv").read_text().splitlines()[0]
    assert header == "layer,head,coef_0,coef_1,coef_pooled"
