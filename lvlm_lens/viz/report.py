"""Self-contained HTML report of a head-attribution run: :func:`write_report` draws figures with
matplotlib's Agg canvas (no display), saves each as ``out_dir/figures/*.png`` and writes
``out_dir/report.html`` with the same PNGs as base64 data URIs and inline CSS (no network, no
other file needed). NaN values (e.g. flat-metric curves) are drawn as gaps or grey cells."""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image
from torch import Tensor

from lvlm_lens.attribution.curves import Curves, RandomBand
from lvlm_lens.attribution.results import AttributionResult

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


@dataclass
class ReportData:
    """Everything :func:`write_report` shows.

    Attributes:
        result: Head-attribution result (pooled fit used if present, else the mean of the
            per-example coefficients).
        rankings: Name -> ``[n_layers, n_heads]`` importance (higher = more important), pooled
            over examples; may include ``"head attribution"``.
        curves: Name -> faithfulness / completeness curves of that ranking.
        random_band: Quantile band of random rankings, if evaluated.
        examples: Examples to show with patch-attention overlays.
        summary: Model, options, versions, fit quality, accuracy, n_examples, timings, ...
        notes: Findings shown prominently (e.g. the outcome of the ranking comparison).
    """

    result: AttributionResult
    rankings: dict[str, Tensor]
    curves: dict[str, Curves]
    random_band: RandomBand | None
    examples: list[ExampleView]
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _np(x: Any) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, float)


def _fmt(v: Any) -> str:
    v = v.item() if isinstance(v, Tensor) and v.numel() == 1 else v
    if isinstance(v, float | np.floating):
        return "–" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, dict):
        return "<br>".join(f"<code>{html.escape(str(k))}</code>: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return "–" if v is None else html.escape(str(v))


def _save(fig: Figure, path: Path) -> str:
    """Save ``fig`` as PNG to ``path``; return an ``<img>`` tag embedding the same bytes."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    path.write_bytes(buf.getvalue())
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'


def _heatmap(imp: np.ndarray, title: str, top: list[tuple[int, int]]) -> Figure:
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


def _curves_fig(curves: dict[str, Curves], band: RandomBand | None, n_total: int) -> Figure:
    fig = Figure(figsize=(11, 4.8), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, what in zip(axes, FC, strict=True):
        if band is not None:
            q, ks, lv = _np(getattr(band, what)), _np(band.ks), band.quantiles
            lo, hi = int(np.argmin(lv)), int(np.argmax(lv))
            label = f"random ({lv[lo]:.0%}–{lv[hi]:.0%})"
            ax.fill_between(ks, q[lo], q[hi], color="0.6", alpha=0.35, lw=0, label=label)
            if 0.5 in lv:
                ax.plot(ks, q[lv.index(0.5)], "--", color="0.35", lw=1.2, label="random (median)")
        for i, name in enumerate(sorted(curves, key=lambda n: n != HA)):  # attribution first
            y = _np(getattr(curves[name], what))
            label = name + ("" if np.isfinite(y).any() else " (all NaN)")
            kw = dict(lw=2.4, zorder=3) if name == HA else dict(lw=1.4, zorder=2)
            ax.plot(_np(curves[name].ks), y, marker="o", ms=3, color=f"C{i}", label=label, **kw)
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


def _example_fig(ex: ExampleView) -> Figure:
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


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}td.n{text-align:right;
font-variant-numeric:tabular-nums}.notes{background:#fff6d5;border-left:6px solid #e0a800;
padding:.4em 1.2em;margin:1em 0;font-size:17px}img{max-width:100%;display:block;margin:.5em 0}
.cap{color:#555;font-size:14px}"""


CAPS = {
    "heat": "Importance −β per layer and head (red: ablating the head's image access lowers the "
    "metric; grey: NaN). Numbers: rank of the {} most important heads.",
    "curves": "Faithfulness: only the top-k heads keep their image access; completeness: only "
    "they lose it; 1 = the whole clean–ablated gap. Table: smallest evaluated k reaching 0.8.",
    "examples": "Attention from the final token to each image patch, per head, scaled to its max "
    "(brighter, more opaque = more; Σ = total on the image). Cyan outline: object patches.",
}
CAPS = {k: f'<p class="cap">{html.escape(v)}</p>' for k, v in CAPS.items()}


def _table(header: list[str] | None, rows: list[list[str]], numeric_from: int = 99) -> str:
    """HTML table of already-escaped cells; columns from ``numeric_from`` on right-aligned."""
    th = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    td = [" class=n" * (j >= numeric_from) for j in range(max(map(len, rows), default=0))]
    body = ["".join(f"<td{td[j]}>{v}</td>" for j, v in enumerate(r)) for r in rows]
    return f"<table>{th}{''.join(f'<tr>{r}</tr>' for r in body)}</table>"


def _order(scores: np.ndarray) -> np.ndarray:
    """Flat head indices, most important first; ties keep layer-major order, NaN go last."""
    return np.nan_to_num(-np.asarray(scores), nan=np.inf).ravel().argsort(kind="stable")


def _top_table(data: ReportData, top: list[tuple[int, int]], coef: np.ndarray, k: int) -> str:
    """Top heads: rank, name, β, score and rank under the other rankings, per-example top-k."""
    res, n_h = data.result, coef.shape[1]
    others = {n: _np(v).reshape(-1, *coef.shape).mean(0) for n, v in data.rankings.items()}
    others.pop(HA, None)
    ranks = {n: _order(v).argsort().reshape(coef.shape) + 1 for n, v in others.items()}
    counts = Counter(divmod(int(j), n_h) for c in _np(res.coef) for j in _order(-c)[:k])
    rows = [
        [str(i + 1), f"L{lh[0]}H{lh[1]}", _fmt(coef[lh])]
        + [f"{_fmt(others[n][lh])} (#{ranks[n][lh]})" for n in others]
        + [f"{counts[lh]} / {len(res.coef)}"]
        for i, lh in enumerate(top)
    ]
    beta = "β (pooled fit)" if res.pooled_coef is not None else "β (mean over examples)"
    extra = [f"{html.escape(n)} (rank)" for n in others]
    return _table(["rank", "head", beta, *extra, f"in per-example top-{k}"], rows, 2)


def write_report(out_dir: str | Path, data: ReportData, n_top: int = 20) -> Path:
    """Write ``report.html`` and ``figures/*.png`` into ``out_dir``.

    Args:
        out_dir: Destination folder (created if missing).
        data: What to show.
        n_top: Heads in the top-heads table (the first 10 are numbered in the heatmap); also the
            per-example top-k used to count in how many examples a head is a top head.

    Returns:
        Path of ``report.html``.
    """
    (fig_dir := Path(out_dir) / "figures").mkdir(parents=True, exist_ok=True)
    n_ex, n_l, n_h = (res := data.result).coef.shape
    pooled = res.pooled_coef is not None
    med_r, med_r2 = float(res.pearson_r.nanmedian()), float(res.r2.nanmedian())
    r = res.pooled_r if pooled and res.pooled_r is not None else med_r
    fit = "pooled fit" if pooled else f"mean of {n_ex} per-example fits"
    imp = _np(res.scores(pooled))  # -β of the pooled fit, or of the mean per-example β
    top = [divmod(int(j), n_h) for j in _order(imp)[:n_top]]
    title = f"Head-attribution importance\n({fit}; held-out r = {_fmt(r)})"
    heat = _save(_heatmap(imp, title, top[:10]), fig_dir / "importance.png")
    fit_q = {"held-out r (pooled)": res.pooled_r, "held-out R² (pooled)": res.pooled_r2}
    fit_q |= {"held-out r (per example, median)": med_r, "R² (per example, median)": med_r2}
    summary = {"model": res.model_name, "n_examples": n_ex, "options": res.options}
    summary |= {"fit quality": fit_q} | data.summary
    rows = [[html.escape(str(k)), _fmt(v)] for k, v in summary.items()]
    parts = [f"<h1>lvlm_lens report: {_fmt(res.model_name or 'head attribution')}</h1>"]
    parts += ["<h2>Summary</h2>", _table(None, rows)]
    if data.notes:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
        parts.append(f'<div class="notes"><h2>Notes</h2><ul>{notes}</ul></div>')
    parts += ["<h2>Head importance</h2>", heat, CAPS["heat"].format(min(10, len(top)))]
    if data.curves:
        fig = _curves_fig(data.curves, data.random_band, n_l * n_h)
        need = [
            [html.escape(n)] + [str(c.heads_needed(0.8, w) or "not reached") for w in FC]
            for n, c in data.curves.items()
        ]
        parts += ["<h2>Faithfulness and completeness</h2>", _save(fig, fig_dir / "curves.png")]
        parts += [CAPS["curves"], _table(["ranking", *FC], need, 1)]
    parts += [f"<h2>Top {len(top)} heads</h2>", _top_table(data, top, -imp, n_top)]
    if data.examples:
        parts += ["<h2>Examples</h2>", CAPS["examples"]]
        for i, ex in enumerate(data.examples):
            parts.append(_save(_example_fig(ex), fig_dir / f"example_{i}.png"))
    head = f'<meta charset="utf-8"><title>lvlm_lens report</title><style>{CSS}</style>'
    page = f'<!DOCTYPE html><html lang="en"><head>{head}</head><body>{"".join(parts)}</body></html>'
    (path := fig_dir.parent / "report.html").write_text(page, encoding="utf-8")
    return path
