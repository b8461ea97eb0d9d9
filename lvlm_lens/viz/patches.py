"""Image tokens laid out on the picture: per-token values -> patch grids -> overlays.

An image's tokens form one or two grids: the *base* tile 0 (LLaVA-1.5, Qwen2-VL, Gemma 3: the
only one; LLaVA-NeXT / OneVision: the whole image resized to one tile; InternVL: the thumbnail)
and, for any-resolution models, the *high-res*
grid of the packed tiles (rows ended by image-newline tokens, padding already removed by the
packing, so it covers the whole picture). :func:`image_grids` finds both from
``inp.image_coords``; :func:`draw_overlay` draws values over the picture; and
:func:`attention_overlay` shows where chosen heads look from any text token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from lvlm_lens.model.families import FAMILIES
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.linear_attention import write_weights
from lvlm_lens.model.vision import CLS, NEWLINE
from lvlm_lens.viz.plots import SEQUENTIAL, new_figure


@dataclass
class ImageGrid:
    """Where one image's tokens sit on a patch grid.

    Attributes:
        kind: ``"base"`` (one tile: the whole image, center-cropped for LLaVA-1.5) or
            ``"high-res"`` (the packed any-resolution tiles, covering the whole image).
        positions: ``[rows, cols]`` sequence position of the token in each cell (-1: none).
        crop: Whether the grid covers the image's central square (LLaVA-1.5's CLIP crop)
            rather than the whole image.
    """

    kind: str
    positions: np.ndarray
    crop: bool = False

    def fill(self, values: Any) -> np.ndarray:
        """``[rows, cols]`` of per-position ``values`` (``[pos]``), NaN where no token."""
        v = values.detach().double().cpu().numpy() if hasattr(values, "detach") else values
        v = np.asarray(v, dtype=float)
        out = np.full(self.positions.shape, np.nan)
        has = self.positions >= 0
        out[has] = v[self.positions[has]]
        return out


def image_token_positions(inp: LVLMInput, index: int = 0, image: int = 0) -> np.ndarray:
    """Sequence positions of the tokens of image ``image`` of example ``index``."""
    n_img = inp.images_per_example[index] if inp.images_per_example else 0
    if not 0 <= image < n_img:
        raise ValueError(f"example {index} has {n_img} image(s); image {image} does not exist")
    first = inp.image_slice(index).start
    counts = [len(inp.image_coords[first + j]) for j in range(n_img)]
    pos = inp.positions("image", index).cpu().numpy()
    start = sum(counts[:image])
    return pos[start : start + counts[image]]


def image_grids(inp: LVLMInput, index: int = 0, image: int = 0) -> list[ImageGrid]:
    """The base grid and (any-resolution models) the high-res grid of one image."""
    if not inp.image_coords:
        raise ValueError("this input has no image-token layout (image_coords); prepare it with "
                         "model.prepare(images, prompts)")
    coords = inp.image_coords[inp.image_slice(index).start + image].cpu().numpy()
    pos = image_token_positions(inp, index, image)
    tile, row, col = coords[:, 0], coords[:, 1], coords[:, 2]
    base = tile == 0
    if not base.any():
        raise ValueError(f"image {image} of example {index} has no base-tile tokens")
    grid = np.full((int(row[base].max()) + 1, int(col[base].max()) + 1), -1)  # Qwen: not square
    grid[row[base], col[base]] = pos[base]
    single = bool((tile[(tile != CLS)] == 0).all())
    # only LLaVA-1.5's CLIP processor center-crops (Qwen keeps the aspect, Gemma 3 resizes); an
    # input made without a model (no lvlm_type) has LLaVA-1.5's fixed grid
    family = FAMILIES.get(inp.lvlm_type)
    crop = single and (family.cropped_grid if family is not None else not inp.lvlm_type)
    grids = [ImageGrid("base", grid, crop=crop)]
    rest = np.nonzero(~base & (tile != CLS))[0]
    rest = rest[rest > np.nonzero(base)[0].max()]
    rows, current = [], []
    for i in rest:
        if tile[i] == NEWLINE:
            rows.append(current)
            current = []
        else:
            current.append(pos[i])
    if current:
        rows.append(current)
    rows = [r for r in rows if r]
    if len(rows) > 1 and len({len(r) for r in rows}) == 1:
        grids.append(ImageGrid("high-res", np.array(rows)))
    return grids


def model_view(image: Image.Image, grid: ImageGrid) -> Image.Image:
    """The part of the picture a grid covers (its central square for a cropped grid)."""
    image = image.convert("RGB")
    if not grid.crop:
        return image
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.crop((left, top, left + s, top + s))


def draw_overlay(
    ax: Axes,
    picture: Image.Image | None,
    values: Float[np.ndarray, "rows cols"],
    *,
    cmap: str = SEQUENTIAL,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.75,
    outline: np.ndarray | None = None,
    scale_alpha: bool = True,
) -> Any:
    """Draw a patch grid of values over a picture (or alone); returns the image artist.

    Args:
        ax: Axes to draw into.
        picture: The picture as the grid covers it (see :func:`model_view`), or None.
        values: ``[rows, cols]`` values (NaN cells are left clear).
        cmap: Colour map.
        vmin: Lower colour limit.
        vmax: Upper colour limit.
        alpha: Opacity of the grid over the picture (of its highest cells with
            ``scale_alpha``).
        outline: Optional ``[rows, cols]`` bool: cells to outline (e.g. object patches).
        scale_alpha: Make each cell's opacity grow with its value (for attention-like maps;
            turn off for categorical maps).
    """
    rows, cols = values.shape
    extent = (0, cols, rows, 0)
    opacity: Any = 1.0
    if picture is not None:
        ax.imshow(np.asarray(picture), extent=extent, interpolation="bilinear")
        opacity = alpha
        if scale_alpha:  # low values stay see-through, so the picture shows where nothing is
            lo = np.nanmin(values) if vmin is None else vmin
            hi = np.nanmax(values) if vmax is None else vmax
            frac = np.clip((np.nan_to_num(values, nan=lo) - lo) / ((hi - lo) or 1.0), 0, 1)
            opacity = 0.1 + (alpha - 0.1) * frac
    art = ax.imshow(np.ma.masked_invalid(values), extent=extent, cmap=cmap, vmin=vmin,
                    vmax=vmax, alpha=opacity, interpolation="nearest")
    if outline is not None:
        from matplotlib.patches import Rectangle

        for r, c in zip(*np.nonzero(outline), strict=True):
            ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor="white", lw=1.2))
    ax.set_xticks([])
    ax.set_yticks([])
    return art


def query_position(inp: LVLMInput, query: str | int, index: int = 0) -> int:
    """A query position: a sequence position, or the last token of a named token group."""
    if isinstance(query, str):
        pos = inp.positions(query, index)
        if len(pos) == 0:
            raise ValueError(f"token group {query!r} is empty in example {index}")
        return int(pos[-1])
    n = inp.shape[1]
    if not -n <= query < n:
        raise ValueError(f"query position {query} out of range for {n} tokens")
    return query % n


def on_image_tokens(model: HookedLVLM, inp: LVLMInput, index: int,
                    pattern: Float[np.ndarray, "q image_pos"]) -> Float[np.ndarray, "q pos"]:
    """A cross-attention head's pattern over one example's image side as attention to its
    ``<|image|>`` tokens (each image's states summed onto its token; the image side's blocks
    past the example's images onto its last image token)."""
    ids = inp.input_ids[index].cpu().numpy()
    at = np.nonzero(ids == model.cfg.image_token_id)[0]
    out = np.zeros((pattern.shape[0], inp.shape[1]))
    if len(at) == 0:
        return out
    n_max = max(max(inp.images_per_example), 1)
    block = pattern.shape[1] // n_max
    for j in range(n_max):
        out[:, at[min(j, len(at) - 1)]] += pattern[:, j * block : (j + 1) * block].sum(-1)
    return out


@torch.no_grad()
def head_attention(
    model: HookedLVLM,
    inp: LVLMInput,
    heads: Sequence[tuple[int, int]],
    query: str | int = "final",
    index: int = 0,
) -> dict[tuple[int, int], Float[np.ndarray, " pos"]]:
    """Attention of each head from one query token to every position of example ``index``.

    A linear-attention head (Qwen3.5) has no pattern: its row is the absolute weight of each
    token's write in the query's read (:func:`~lvlm_lens.model.linear_attention.write_weights`),
    normalised to sum to 1. A cross-attention head (Llama 3.2 Vision) reads the image side: its
    row holds its attention to each image on the image's ``<|image|>`` token
    (:func:`on_image_tokens`).

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        inp: The input.
        heads: ``(layer, head)`` pairs.
        query: A sequence position, or a token group name (its last token; default the final).
        index: Which example of the batch.
    """
    q = query_position(inp, query, index)
    layers = sorted({layer for layer, _ in heads})
    lin = model.cfg.decoder.linear_attention
    linear = () if lin is None else lin.layers
    names = [model.attn_hook_name(la, n) for la in layers
             for n in (("q", "k", "decay") if la in linear else ("pattern",))]  # fmt: skip
    one = inp.select(index) if len(inp) > 1 else inp
    _, cache = model.run_with_cache(one, names_filter=names, return_cache_object=False)
    out = {}
    for layer, head in heads:
        if layer in linear:  # |weight of each token's write in the read|, summing to 1
            a = f"blocks.{layer}.attn.hook_"
            kh = head // (lin.n_v_heads // lin.n_k_heads)
            w = write_weights(cache[a + "q"][0, :, kh], cache[a + "k"][0, :, kh],
                              cache[a + "decay"][0, :, head]).abs()
            row = (w / w.sum(-1, keepdim=True).clamp(min=1e-30)).cpu().numpy()
        else:
            row = cache[model.attn_hook_name(layer, "pattern")][0, head].float().cpu().numpy()
            if model.attn_kind(layer) == "cross":
                row = on_image_tokens(model, one, 0, row)
        off = inp.shape[1] - row.shape[-1]  # columns dropped by select() (common left padding)
        out[(layer, head)] = np.concatenate([np.zeros(off), row[q - off]])
    return out


def attention_overlay(
    model: HookedLVLM,
    inp: LVLMInput,
    heads: Sequence[tuple[int, int]],
    *,
    query: str | int = "final",
    index: int = 0,
    image: int = 0,
    picture: Image.Image | None = None,
    outline: np.ndarray | None = None,
    share_scale: bool = False,
) -> Figure:
    """Attention of chosen heads from a text token, drawn over the picture's patch grid(s).

    One row per head; one column per grid (base tile, and the high-res grid of any-resolution
    models). The title gives the share of the query's attention that lands on the image.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        inp: The input (any batch; example ``index`` is drawn).
        heads: ``(layer, head)`` pairs.
        query: Query position or token group (its last token); default the final token.
        index: Which example.
        image: Which image of the example.
        picture: The example's image (PIL) to draw under the grid; None draws the grid alone.
        outline: Optional base-grid bool mask of cells to outline (e.g. object patches).
        share_scale: One colour scale for every panel (default: each panel its own maximum).
    """
    grids = image_grids(inp, index, image)
    att = head_attention(model, inp, heads, query, index)
    img_pos = image_token_positions(inp, index, image)
    top = max(float(a[img_pos].max()) for a in att.values()) if share_scale else None
    fig, axes = new_figure(len(grids), len(heads), (2.6, 2.6))
    q = query_position(inp, query, index)
    token = model.to_str_tokens(inp, index)[q - int((inp.attention_mask[index] == 0).sum())]
    for r, (head, a) in enumerate(att.items()):
        for c, grid in enumerate(grids):
            ax = axes[r, c]
            vals = grid.fill(a)
            pic = None if picture is None else model_view(picture, grid)
            art = draw_overlay(ax, pic, vals, vmin=0, vmax=top or np.nanmax(vals),
                               outline=outline if c == 0 else None)
            share = float(a[img_pos].sum())
            ax.set_title(f"L{head[0]}H{head[1]} {grid.kind}: {share:.0%} on image", fontsize=8)
        fig.colorbar(art, ax=axes[r, -1], shrink=0.8, label="attention")
    fig.suptitle(f"attention from {token!r} (position {q})", fontsize=9)
    return fig
