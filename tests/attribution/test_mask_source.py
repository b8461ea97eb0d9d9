"""Masks drawn chunk by chunk are the all-at-once masks of sample_masks, row for row."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens.attribution.mask_source import MaskSource
from lvlm_lens.attribution.regression import sample_masks


@pytest.mark.parametrize(
    "n, layers, heads, chunk",
    [(1000, 4, 8, 64), (41, 3, 5, 7), (100, 1, 1, 3), (37, 7, 3, 1), (20, 2, 2, 50),
     (5000, 16, 16, 999)],
)  # fmt: skip
def test_chunks_are_the_all_at_once_masks(n, layers, heads, chunk):
    whole = sample_masks(n, layers, heads, rate=0.2, seed=7)
    src = MaskSource(n, layers, heads, rate=0.2, seed=7, chunk_size=chunk)
    parts = list(src.chunks())
    assert [c for c, _ in parts] == list(range(src.n_chunks)) and src.n_chunks == -(-n // chunk)
    for c, part in parts:
        rows = src.chunk_rows(c)
        assert part.dtype == torch.bool and torch.equal(part, whole[rows.start : rows.stop])
    assert torch.equal(torch.cat([p for _, p in parts]), whole)
    assert torch.equal(src.all(), whole)


def test_only_some_chunks_are_the_same_rows():
    """A resumed run asks for the chunks still to do: they are the rows of a full draw."""
    whole = sample_masks(50, 2, 3, rate=0.3, seed=1)
    src = MaskSource(50, 2, 3, rate=0.3, seed=1, chunk_size=8)
    got = dict(src.chunks(only={1, 4, 6}))
    assert sorted(got) == [1, 4, 6]
    assert torch.equal(got[1], whole[8:16]) and torch.equal(got[4], whole[32:40])
    assert torch.equal(got[6], whole[48:50])  # the short last chunk
    assert list(src.chunks(only=set())) == []


def test_a_given_tensor_is_handed_out_in_chunks():
    masks = sample_masks(10, 2, 2, rate=0.5, seed=0)
    src = MaskSource.from_tensor(masks, chunk_size=4)
    assert (src.n_masks, src.n_layers, src.n_heads, src.n_chunks) == (10, 2, 2, 3)
    assert torch.equal(torch.cat([p for _, p in src.chunks()]), masks)
    assert src.all() is masks
    with pytest.raises(ValueError, match="bool"):
        MaskSource.from_tensor(masks.float())


def test_bad_sources_are_refused():
    with pytest.raises(ValueError, match="rate"):
        MaskSource(10, 2, 2, rate=1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        MaskSource(10, 2, 2, chunk_size=0)
