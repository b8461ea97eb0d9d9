"""The report's figures: head importance, faithfulness / completeness curves, and examples with
the attention of the top heads over their image patches. Each function returns a matplotlib
figure (Agg canvas, no display). NaN values are drawn as gaps or grey cells."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image
from torch import Tensor

from lvlm_lens.attribution.curves import Curves, RandomBand

HA = "head attribution"
FC = ("faithfulness", "completeness")


@dataclass
class ExampleView:
    """One example to show with the attention of the top heads over its image patches.

    Attributes:
        image: The image as the model saw it (after any crop / pad), so patches line up.
        label: True object name.
        prediction: The model's answer.
        patch_attention: Head name (e.g. ``"L2H5"``) -> ``[grid_h, grid_w]`` attention from the
            final token to each image patch.
        object_patches: Optional ``[grid_h, grid_w]`` bool, True on patches of the object.
    """

    image: Image.Image
    label: str
    prediction: str
    patch_attention: dict[str, np.ndarray]
    object_patches: np.ndarray | None = None


def to_numpy(x: Any) -> np.ndarray:
    """A tensor or array-like as a float64 numpy array."""
    return x.detach().double().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, float)


def importance_figure(imp: np.ndarray, title: str, top: list[tuple[int, int]]) -> Figure:
    """Heatmap of importance ``-β`` per layer and head, the ``top`` heads numbered by rank."""
    n_l, n_h = imp.shape
    size = (min(max(n_h * 0.24 + 2.2, 5.0), 13.0), min(max(n_l * 0.22 + 1.4, 3.2), 11.0))
    fig = Figure(figsize=size, dpi=120, layout="constrained")
    ax = fig.add_subplot()
    vmax = float(np.nanmax(np.abs(imp))) if np.isfinite(imp).any() else 0.0
    kw = dict(vmin=-(vmax or 1.0), vmax=vmax or 1.0, aspect="auto", interpolation="nearest")
    im = ax.imshow(imp, cmap=colormaps["RdBu_r"].with_extremes(bad="0.75"), **kw)
    kw = dict(ha="center", va="center", fontsize=7 if n_h > 16 else 9, fontweight="bold")
    for rank, (layer, head) in enumerate(top, 1):  # rank number on the top heads
        dark = abs(imp[layer, head]) > 0.5 * (vmax or 1.0)
        ax.text(head, layer, str(rank), color="w" if dark else "k", **kw)
    for set_ticks, n in ((ax.set_xticks, n_h), (ax.set_yticks, n_l)):
        ticks = range(0, n, max(1, math.ceil(n / 32)))
        set_ticks(ticks, [str(i) for i in ticks], fontsize=7 if n > 16 else 9)
    ax.set(xlabel="head", ylabel="layer (0 = first)", title=title)
    fig.colorbar(im, ax=ax, label="importance −β", shrink=0.9)
    return fig


def curves_figure(curves: dict[str, Curves], band: RandomBand | None, n_total: int) -> Figure:
    """Faithfulness and completeness of each ranking over k (log scale), with the random band."""
    fig = Figure(figsize=(11, 4.8), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, what in zip(axes, FC, strict=True):
        if band is not None:
            q, ks, lv = to_numpy(getattr(band, what)), to_numpy(band.ks), band.quantiles
            lo, hi = int(np.argmin(lv)), int(np.argmax(lv))
            label = f"random ({lv[lo]:.0%}–{lv[hi]:.0%})"
            ax.fill_between(ks, q[lo], q[hi], color="0.6", alpha=0.35, lw=0, label=label)
            if 0.5 in lv:
                ax.plot(ks, q[lv.index(0.5)], "--", color="0.35", lw=1.2, label="random (median)")
        for i, name in enumerate(sorted(curves, key=lambda n: n != HA)):  # attribution first
            y = to_numpy(getattr(curves[name], what))
            label = name + ("" if np.isfinite(y).any() else " (all NaN)")
            kw = dict(lw=2.4, zorder=3) if name == HA else dict(lw=1.4, zorder=2)
            ks = to_numpy(curves[name].ks)
            ax.plot(ks, y, marker="o", ms=3, color=f"C{i}", label=label, **kw)
        ax.hlines([0, 1], 0, n_total, color="0.8", lw=0.8, zorder=0)
        pct = ax.twiny()  # % of heads on top; same symlog scale so the ticks line up
        for a in (ax, pct):
            a.set_xscale("symlog", linthresh=1, linscale=0.4)
            a.set_xlim(0, n_total)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        fracs = [p for p in (0.001, 0.01, 0.1, 0.25, 0.5, 1.0) if p * n_total >= 1]
        pct.set_xticks([p * n_total for p in fracs], [f"{p * 100:g}%" for p in fracs], fontsize=8)
        pct.minorticks_off()
        pct.set_xlabel("% of heads", fontsize=9)
        pct.set_title(what, fontsize=12)
        ax.set_xlabel(f"top-k heads (of {n_total}; log scale)")
        ax.grid(alpha=0.3, which="major")
    axes[0].set_ylabel("fraction of the clean–ablated gap")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=9)
    return fig


def _outline(mask: np.ndarray, sx: float, sy: float) -> LineCollection:
    """Segments on the border between True and False cells of ``mask`` (pixel coordinates)."""
    m = np.pad(np.asarray(mask, bool), 1)
    hor, ver = np.nonzero(m[1:, :-1] != m[:-1, :-1]), np.nonzero(m[:-1, 1:] != m[:-1, :-1])
    segs = [[((c - 1) * sx, r * sy), (c * sx, r * sy)] for r, c in zip(*hor, strict=True)]
    segs += [[(c * sx, (r - 1) * sy), (c * sx, r * sy)] for r, c in zip(*ver, strict=True)]
    return LineCollection(segs, colors="#00e5ff", linewidths=1.6)


def example_figure(ex: ExampleView) -> Figure:
    """An example's image, then the attention of each head from the final token per patch."""
    img = np.asarray(ex.image.convert("RGB"))
    h, w = img.shape[:2]
    gray = img.mean(-1)  # overlays go on a grey copy so the heatmap colours stay readable
    panels = [("image", None), *ex.patch_attention.items()]
    cols, rows = min(len(panels), 5), math.ceil(len(panels) / 5)
    size = (2.6 * cols, (2.6 * h / w + 0.3) * rows + 0.4)
    fig = Figure(figsize=size, dpi=110, layout="constrained")
    ok = ex.label.strip().lower() == ex.prediction.strip().lower()
    title = f"label: {ex.label}   prediction: {ex.prediction}   ({'✓' if ok else '✗'})"
    fig.suptitle(title, color="k" if ok else "#b00020")
    ext, axes = (0, w, h, 0), list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes:
        ax.set_axis_off()
    for ax, (name, att) in zip(axes, panels, strict=False):
        if att is None:
            ax.imshow(img, extent=ext, interpolation="nearest")
        else:
            ax.imshow(gray, extent=ext, cmap="gray", vmin=-60, vmax=255, interpolation="nearest")
            a = np.asarray(att, float)
            top = np.nanmax(a) if np.isfinite(a).any() else 0.0
            norm = np.nan_to_num(a / top if top > 0 else a * 0, nan=0.0).clip(0, 1)
            rgba = colormaps["inferno"](norm)
            rgba[..., 3] = 0.15 + 0.75 * norm
            ax.imshow(rgba, extent=ext, interpolation="nearest")
            name = f"{name}  (Σ={np.nansum(a):.2f}, max={top:.2g})"
        if ex.object_patches is not None:
            gh, gw = np.shape(ex.object_patches)
            ax.add_collection(_outline(ex.object_patches, w / gw, h / gh))
        ax.set(xlim=(0, w), ylim=(h, 0))
        ax.set_title(name, fontsize=8)
    return fig
