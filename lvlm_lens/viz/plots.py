"""The analyses' figures in one matplotlib style: layer x head heatmaps, curves with confidence
bands, similarity matrices.

Figures are built on :class:`matplotlib.figure.Figure` (no pyplot state, so they work headless
and in notebooks alike) and returned; pass ``ax=`` to draw into an existing axes instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: The style of every analysis figure.
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "legend.frameon": False,
    "figure.dpi": 100,
}
#: Diverging map for signed scores (importance, effects), sequential for non-negative ones.
DIVERGING, SEQUENTIAL = "RdBu_r", "viridis"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip


def new_figure(n_cols: int = 1, n_rows: int = 1, size: tuple[float, float] = (4.0, 3.2),
               **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A headless figure with a grid of axes (always a 2-D array) in the shared style."""
    from matplotlib import rc_context

    with rc_context(STYLE):
        fig = Figure(figsize=(size[0] * n_cols, size[1] * n_rows), layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=False, **kwargs)
    for ax in axes.flat:
        _style(ax)
    return fig, axes


def _style(ax: Axes) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)


def _target(ax: Axes | None, size: tuple[float, float] = (4.0, 3.2)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, axes = new_figure(size=size)
    return fig, axes[0, 0]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=float)


def head_heatmap(
    scores: Any,
    *,
    ax: Axes | None = None,
    title: str = "",
    label: str = "importance",
    mark: Sequence[tuple[int, int]] = (),
    signed: bool | None = None,
    vmax: float | None = None,
    xlabels: Sequence[str] | None = None,
    xlabel: str = "head",
) -> Figure:
    """A layer x head heatmap (layers down, heads across).

    Args:
        scores: ``[n_layers, n_heads]`` values (tensor or array).
        ax: Axes to draw into (default: a new figure).
        title: Axes title.
        label: Colour-bar label.
        mark: ``(layer, head)`` cells to outline (e.g. the top-k heads).
        signed: Diverging colours centred on 0 (default: when the values have both signs).
        vmax: Colour limit (default: the largest absolute value).
        xlabels: Column labels (default: head indices), e.g. token-group names.
        xlabel: Column axis label.
    """
    s = _np(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be [n_layers, n_heads], got shape {s.shape}")
    fig, ax = _target(ax, (0.45 * s.shape[1] + 1.6, 0.35 * s.shape[0] + 1.2))
    finite = s[np.isfinite(s)]
    signed = bool((finite < 0).any() and (finite > 0).any()) if signed is None else signed
    top = vmax or (float(np.abs(finite).max()) if finite.size else 1.0) or 1.0
    cmap = colormaps[DIVERGING if signed else SEQUENTIAL].with_extremes(bad="#dddddd")
    kw = dict(vmin=-top, vmax=top) if signed else dict(vmax=top)
    im = ax.imshow(np.ma.masked_invalid(s), aspect="auto", interpolation="nearest", cmap=cmap,
                   **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    if xlabels is None:
        ax.set_xticks(range(s.shape[1]))
    else:
        ax.set_xticks(range(s.shape[1]), list(xlabels), rotation=30, ha="right")
    ax.set_yticks(range(s.shape[0]))
    for layer, head in mark:
        ax.add_patch(_cell(layer, head))
    fig.colorbar(im, ax=ax, label=label, shrink=0.85)
    ax.set_title(title)
    return fig


def _cell(layer: int, head: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.5)


def heatmaps(
    maps: dict[str, Any],
    *,
    label: str = "importance",
    marks: dict[str, Sequence[tuple[int, int]]] | None = None,
    shared_scale: bool = False,
) -> Figure:
    """Several layer x head heatmaps side by side (e.g. image vs text-only circuits).

    Args:
        maps: Title -> ``[n_layers, n_heads]`` values.
        label: Colour-bar label.
        marks: Title -> cells to outline.
        shared_scale: One colour scale for all panels (default: each its own).
    """
    arrays = {k: _np(v) for k, v in maps.items()}
    first = next(iter(arrays.values()))
    fig, axes = new_figure(len(arrays), 1, (0.45 * first.shape[1] + 1.6, 0.35 * first.shape[0]
                                            + 1.2))
    top = max(float(np.nanmax(np.abs(a))) for a in arrays.values()) if shared_scale else None
    for ax, (name, arr) in zip(axes[0], arrays.items(), strict=True):
        head_heatmap(arr, ax=ax, title=name, label=label, mark=(marks or {}).get(name, ()),
                     vmax=top)
    return fig


def line_plot(
    frame: pd.DataFrame,
    x: str,
    y: str = "mean",
    *,
    hue: str | None = None,
    low: str | None = "low",
    high: str | None = "high",
    ax: Axes | None = None,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    zero_line: bool = True,
    panels: str | None = None,
) -> Figure:
    """Curves of ``y`` over ``x``, one per ``hue`` value, with a shaded ``[low, high]`` band.

    Args:
        frame: Tidy table (e.g. from :func:`~lvlm_lens.analysis.stats.ci_table`).
        x: Column on the x axis.
        y: Column on the y axis.
        hue: Column whose values get one line each.
        low: Lower band column (None: no band).
        high: Upper band column.
        ax: Axes to draw into (only without ``panels``).
        title: Figure title.
        xlabel: x label (default ``x``).
        ylabel: y label (default ``y``).
        zero_line: Draw ``y = 0``.
        panels: Column whose values get one panel each.
    """
    groups = [(None, frame)] if panels is None else list(frame.groupby(panels, sort=False))
    if ax is not None and panels is None:
        fig, axes = ax.figure, np.array([ax])
    else:
        n_cols = min(len(groups), 4)
        n_rows = -(-len(groups) // n_cols)
        fig, grid = new_figure(n_cols, n_rows, (3.2, 2.6), sharey=True, sharex=True)
        axes = grid.ravel()
        for extra in axes[len(groups):]:
            extra.set_visible(False)
        axes = axes[: len(groups)]
    for ax_, (name, part) in zip(axes, groups, strict=True):
        lines = [(None, part)] if hue is None else list(part.groupby(hue, sort=False))
        for i, (key, sub) in enumerate(lines):
            sub = sub.sort_values(x)
            color = PALETTE[i % len(PALETTE)]
            ax_.plot(sub[x], sub[y], marker="o", ms=3, color=color,
                     label=None if key is None else str(key))
            if low and high and low in sub and high in sub:
                ax_.fill_between(sub[x], sub[low], sub[high], color=color, alpha=0.15, lw=0)
        if zero_line:
            ax_.axhline(0, color="black", lw=0.6, alpha=0.6)
        ax_.set_xlabel(xlabel or x)
        ax_.set_title("" if name is None else str(name))
        if pd.api.types.is_integer_dtype(part[x]):
            from matplotlib.ticker import MaxNLocator

            ax_.xaxis.set_major_locator(MaxNLocator(integer=True))
        if hue is not None:
            ax_.legend(fontsize=7)
    for ax_ in axes[:: min(len(axes), 4)] if panels is not None else axes[:1]:
        ax_.set_ylabel(ylabel or y)
    if title:
        fig.suptitle(title)
    return fig


def bar_plot(
    frame: pd.DataFrame,
    x: str,
    y: str = "mean",
    *,
    low: str | None = "low",
    high: str | None = "high",
    ax: Axes | None = None,
    title: str = "",
    ylabel: str | None = None,
) -> Figure:
    """Bars of ``y`` per ``x`` category with ``[low, high]`` error bars."""
    fig, ax = _target(ax)
    pos = np.arange(len(frame))
    err = None
    if low and high and low in frame and high in frame:
        err = np.vstack([frame[y] - frame[low], frame[high] - frame[y]]).clip(min=0)
    ax.bar(pos, frame[y], yerr=err, color=[PALETTE[i % len(PALETTE)] for i in pos], capsize=3)
    ax.set_xticks(pos, [str(v) for v in frame[x]], rotation=20, ha="right")
    ax.axhline(0, color="black", lw=0.6, alpha=0.6)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    return fig


def similarity_matrix(
    matrix: Any,
    groups: Sequence[Any] | None = None,
    *,
    ax: Axes | None = None,
    title: str = "",
    label: str = "similarity",
) -> Figure:
    """An example x example similarity matrix; ``groups`` (one label per row, already sorted)
    draws separators and labels between blocks of equal labels."""
    m = _np(matrix)
    fig, ax = _target(ax, (4.6, 4.0))
    top = float(np.nanmax(np.abs(m[~np.eye(len(m), dtype=bool)]))) if len(m) > 1 else 1.0
    im = ax.imshow(m, cmap=DIVERGING, vmin=-top, vmax=top, interpolation="nearest")
    if groups is not None:
        labels = [str(g) for g in groups]
        starts = [i for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
        ends = [*starts[1:], len(labels)]
        for s in starts[1:]:
            ax.axhline(s - 0.5, color="black", lw=0.6)
            ax.axvline(s - 0.5, color="black", lw=0.6)
        mids = [(s + e - 1) / 2 for s, e in zip(starts, ends, strict=True)]
        names = [labels[s] for s in starts]
        ax.set_xticks(mids, names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(mids, names, fontsize=7)
    fig.colorbar(im, ax=ax, label=label, shrink=0.85)
    ax.set_title(title)
    return fig
