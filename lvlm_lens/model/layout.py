"""Where the tokens of a run sit, beyond the attention mask: rotary positions, image blocks,
and the visual features some families add inside the decoder (DeepStack)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lvlm_lens.model.cross_attention import CrossInput


@dataclass
class TokenLayout:
    """Rotary positions and bidirectional image blocks of the tokens a run processes.

    Attributes:
        position_ids: ``[batch, pos]`` (1-D RoPE) or ``[3, batch, pos]`` (M-RoPE) positions, or
            ``None`` for ``cumsum(attention_mask) - 1`` continued after any cached prefix.
        image_blocks: Per token, the id of its bidirectional image block (``-1`` for tokens
            outside one), or ``None`` where attention is causal everywhere.
        deepstack: Per early decoder layer, what is added to the residual stream after it
            (Qwen3-VL: DeepStack features at the image positions, zero elsewhere).
        cross: The image side the cross-attention layers read (Llama 3.2 Vision), ``None``
            without cross-attention layers or without an image.
        per_layer: Each token's per-layer input vectors (Gemma 4's PLE), ``None`` without.
    """

    position_ids: Int[Tensor, "*three batch pos"] | None = None
    image_blocks: Int[Tensor, "batch pos"] | None = None
    deepstack: list[Float[Tensor, "batch pos d_model"]] | None = None
    cross: CrossInput | None = None
    per_layer: Float[Tensor, "batch pos layer d_ple"] | None = None

    def cols(self, cols: slice) -> TokenLayout:
        """The layout of a range of columns (a prefix or a suffix of the batch)."""
        return TokenLayout(
            None if self.position_ids is None else self.position_ids[..., cols],
            None if self.image_blocks is None else self.image_blocks[:, cols],
            None if self.deepstack is None else [d[:, cols] for d in self.deepstack],
            None if self.cross is None else self.cross.cols(cols),
            None if self.per_layer is None else self.per_layer[:, cols],
        )

    def expand(self, batch: int) -> TokenLayout:
        """The layout of one example repeated for ``batch`` rows."""
        pos = self.position_ids
        if pos is not None:
            pos = pos.expand(*pos.shape[:-2], batch, pos.shape[-1])
        blocks = None if self.image_blocks is None else self.image_blocks.expand(batch, -1)
        deep = None if self.deepstack is None else [d.expand(batch, -1, -1) for d in self.deepstack]
        cross = None if self.cross is None else self.cross.expand(batch)
        ple = None if self.per_layer is None else self.per_layer.expand(batch, -1, -1, -1)
        return TokenLayout(pos, blocks, deep, cross, ple)

    def to(self, device: torch.device | str) -> TokenLayout:
        """Move to ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        deep = None if self.deepstack is None else [mv(d) for d in self.deepstack]
        cross = None if self.cross is None else self.cross.to(device)
        return TokenLayout(mv(self.position_ids), mv(self.image_blocks), deep, cross,
                           mv(self.per_layer))

    def splits_block(self, cut: int) -> bool:
        """Whether a bidirectional block has tokens on both sides of column ``cut``: then the
        tokens before ``cut`` depend on those after it, and a prefix cut there is not valid."""
        b = self.image_blocks
        if b is None or cut <= 0 or cut >= b.shape[1]:
            return False
        return bool(((b[:, cut - 1] >= 0) & (b[:, cut - 1] == b[:, cut])).any())

    def next_positions(self, attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
        """The position a token appended after these would take: ``1 + max`` real position."""
        if self.position_ids is None:
            return attention_mask.long().sum(-1)
        pos = self.position_ids if self.position_ids.ndim == 2 else self.position_ids.amax(0)
        if pos.shape[-1] == 0:  # an empty prefix: the first token takes position 0
            return torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        pos = pos.masked_fill(attention_mask.to(pos.device) == 0, -1)
        return pos.amax(-1) + 1
