"""A circuitsvis attention view in which the image tokens are collapsed into a few labelled
groups, so a prompt with hundreds of image tokens stays readable.

Keys in a group receive the *sum* of the attention to its tokens (so each query row still sums
to 1); a group as a query shows the *mean* attention row of its tokens. Text tokens stay as
they are. A cross-attention head (Llama 3.2 Vision) reads the image side, not the sequence: its
attention to an image's states is shown on that image's ``<|image|>`` token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float

from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.viz.patches import image_grids, on_image_tokens


@dataclass
class CollapsedAttention:
    """Attention of some heads with image tokens merged into groups.

    Attributes:
        pattern: ``[n_heads, n_tokens, n_tokens]`` collapsed attention (rows: queries).
        tokens: Label of each collapsed token (text tokens as strings, groups as ``[name]``).
        heads: The ``(layer, head)`` of each pattern.
        members: Sequence positions merged into each collapsed token.
    """

    pattern: Float[np.ndarray, "head q k"]
    tokens: list[str]
    heads: list[tuple[int, int]]
    members: list[list[int]]

    def render(self) -> Any:
        """The circuitsvis ``attention_heads`` view (HTML in a notebook)."""
        from circuitsvis.attention import attention_heads

        names = [f"L{layer}H{head}" for layer, head in self.heads]
        return attention_heads(attention=self.pattern, tokens=self.tokens,
                               attention_head_names=names)


def image_groups(
    inp: LVLMInput, index: int = 0, *, rows_per_group: int | None = None,
    regions: dict[str, Bool[np.ndarray, " pos"]] | None = None,
) -> dict[str, list[int]]:
    """Image-token groups of one example: bands of grid rows (default) or named regions.

    Args:
        inp: The input.
        index: Which example.
        rows_per_group: Grid rows per group (default: about 6 groups per grid).
        regions: Name -> ``[pos]`` bool mask (e.g. ``object`` / ``background`` patches); used
            instead of row bands when given. Image tokens in no region form ``[image other]``.
    """
    pos_all = inp.positions("image", index).tolist()
    if regions:
        out = {name: [p for p in pos_all if bool(m[p])] for name, m in regions.items()}
        left = sorted(set(pos_all) - {p for v in out.values() for p in v})
        out = {k: v for k, v in out.items() if v}
        return out | ({"image other": left} if left else {})
    out: dict[str, list[int]] = {}
    n_img = inp.images_per_example[index]
    for image in range(n_img):
        coords = inp.image_coords[inp.image_slice(index).start + image] if inp.image_coords \
            else None
        if coords is not None and not (coords[:, 0] == 0).any():
            continue  # no patch tokens in the sequence (a cross-attention model's image token)
        for grid in image_grids(inp, index, image):
            rows = grid.positions.shape[0]
            step = rows_per_group or max(1, round(rows / 6))
            for r0 in range(0, rows, step):
                cells = grid.positions[r0 : r0 + step]
                name = (f"img{image} " if n_img > 1 else "img ") + (
                    f"{grid.kind} " if grid.kind != "base" else "") + (
                    f"rows {r0}-{min(r0 + step, rows) - 1}")
                out[name] = sorted(int(p) for p in cells.ravel() if p >= 0)
    covered = {p for v in out.values() for p in v}
    left = sorted(set(pos_all) - covered)  # e.g. image-newline tokens
    return out | ({"img other": left} if left else {})


@torch.no_grad()
def collapsed_attention(
    model: HookedLVLM,
    inp: LVLMInput,
    heads: Sequence[tuple[int, int]],
    *,
    index: int = 0,
    groups: dict[str, list[int]] | None = None,
) -> CollapsedAttention:
    """Attention patterns of ``heads`` with image tokens merged (see :func:`image_groups`).

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        inp: The input.
        heads: ``(layer, head)`` pairs.
        index: Which example.
        groups: Name -> sequence positions to merge (default :func:`image_groups`).
    """
    groups = image_groups(inp, index) if groups is None else groups
    layers = sorted({layer for layer, _ in heads})
    names = [model.attn_hook_name(layer, "pattern") for layer in layers]
    _, cache = model.run_with_cache(inp, names_filter=names, return_cache_object=False)
    real = inp.attention_mask[index].bool().cpu().numpy()
    strs = model.to_str_tokens(inp, index)
    label = dict(zip(np.nonzero(real)[0].tolist(), strs, strict=True))
    first = {min(v): k for k, v in groups.items() if v}
    grouped = {p for v in groups.values() for p in v}
    members, tokens = [], []
    for p in np.nonzero(real)[0].tolist():
        if p in first:
            members.append(groups[first[p]])
            tokens.append(f"[{first[p]}]")
        elif p not in grouped:
            members.append([p])
            tokens.append(label[p])
    n = len(members)
    onehot = np.zeros((n, inp.shape[1]))
    for i, m in enumerate(members):
        onehot[i, m] = 1.0
    out = []
    for layer, head in heads:
        p = cache[model.attn_hook_name(layer, "pattern")][index, head].double().cpu().numpy()
        if model.attn_kind(layer) == "cross":
            p = on_image_tokens(model, inp, index, p)
        keys = p @ onehot.T  # [q, n]: summed over each group's keys
        rows = (onehot @ keys) / onehot.sum(1, keepdims=True)  # mean over each group's queries
        out.append(rows)
    return CollapsedAttention(np.stack(out).astype(np.float32), tokens, list(heads), members)


def attention_view(model: HookedLVLM, inp: LVLMInput, heads: Sequence[tuple[int, int]], *,
                   index: int = 0, groups: dict[str, list[int]] | None = None) -> Any:
    """The circuitsvis view of :func:`collapsed_attention` (renders in a notebook)."""
    return collapsed_attention(model, inp, heads, index=index, groups=groups).render()
