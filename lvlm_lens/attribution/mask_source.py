"""Random ablation masks drawn chunk by chunk, so a run never holds more than a chunk's draw.

A :class:`MaskSource` gives the masks of :func:`~lvlm_lens.attribution.regression.sample_masks`
(same rate, seed and count) one block of rows at a time: the CPU generator is advanced chunk by
chunk, and its uniform draws in pieces equal one draw of all of them, so chunk ``c`` holds rows
``c * chunk_size`` to ``(c + 1) * chunk_size`` of the all-at-once masks exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor


@dataclass(frozen=True)
class MaskSource:
    """The random masks of a run, in chunks of ``chunk_size`` rows (the last may be short).

    Attributes:
        n_masks: Number of masks.
        n_layers: Layers of the model.
        n_heads: Query heads per layer.
        rate: Ablation probability in (0, 1).
        seed: Seed of the CPU generator.
        chunk_size: Rows per chunk.
        given: Masks given whole instead of drawn (:meth:`from_tensor`).
    """

    n_masks: int
    n_layers: int
    n_heads: int
    rate: float = 0.05
    seed: int = 0
    chunk_size: int = 4096
    given: Tensor | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"rate must be in (0, 1), got {self.rate}")
        sizes = (self.n_masks, self.n_layers, self.n_heads, self.chunk_size)
        if min(sizes) <= 0:
            raise ValueError(f"sizes must be positive, got n_masks, n_layers, n_heads, "
                             f"chunk_size = {sizes}")  # fmt: skip

    @classmethod
    def from_tensor(
        cls, masks: Bool[Tensor, "n_masks n_layers n_heads"], chunk_size: int = 4096
    ) -> MaskSource:
        """A source over masks already in memory (chunks are views of ``masks``)."""
        if masks.dtype != torch.bool or masks.ndim != 3 or 0 in masks.shape:
            raise ValueError(f"masks must be bool [n_masks, n_layers, n_heads], got "
                             f"{masks.dtype} {tuple(masks.shape)}")  # fmt: skip
        n, layers, heads = masks.shape
        return cls(n, layers, heads, chunk_size=chunk_size, given=masks)

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return -(-self.n_masks // self.chunk_size)

    def chunk_rows(self, c: int) -> range:
        """The mask indices of chunk ``c``."""
        return range(c * self.chunk_size, min((c + 1) * self.chunk_size, self.n_masks))

    def chunks(
        self, only: set[int] | None = None
    ) -> Iterator[tuple[int, Bool[Tensor, "chunk n_layers n_heads"]]]:
        """``(c, masks of chunk c)`` in order; ``only`` keeps those chunks (the others are
        still drawn, to advance the generator, but not handed out)."""
        shape = (self.n_layers, self.n_heads)
        gen = None if self.given is not None else torch.Generator().manual_seed(self.seed)
        last = self.n_chunks - 1 if only is None else max(only, default=-1)
        for c in range(last + 1):
            rows = self.chunk_rows(c)
            if gen is None:
                part = self.given[rows.start : rows.stop]
            else:
                part = torch.rand((len(rows), *shape), generator=gen) < self.rate
            if only is None or c in only:
                yield c, part

    def all(self) -> Bool[Tensor, "n_masks n_layers n_heads"]:
        """Every mask at once (1 byte per head and mask; no float draw of all of them)."""
        if self.given is not None:
            return self.given
        out = torch.empty((self.n_masks, self.n_layers, self.n_heads), dtype=torch.bool)
        for c, part in self.chunks():
            rows = self.chunk_rows(c)
            out[rows.start : rows.stop] = part
        return out
