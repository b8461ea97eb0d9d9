"""Self-contained HTML report of a head-attribution run.

:func:`write_report` draws the figures of :mod:`lvlm_lens.viz.figures`, saves each as
``out_dir/figures/*.png`` and writes ``out_dir/report.html`` with the same PNGs as base64 data
URIs and inline CSS (no network, no other file needed). The page reads top to bottom: what was
run and how well the linear model fits, notes, the important heads, how they compare with other
rankings, examples, and the options. Numbers behind the curves stay in the run's files.
"""

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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lvlm_lens.attribution.curves import Curves, RandomBand
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.viz.figures import (
    FC,
    HA,
    ExampleView,
    curves_figure,
    example_figure,
    importance_figure,
    to_numpy,
)


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
        summary: What the run recorded (``summary.json`` of ``lvlm-lens attribute``): model,
            data, accuracy, options, versions, timings; every key is optional.
        notes: Findings shown prominently (e.g. the outcome of the ranking comparison).
    """

    result: AttributionResult
    rankings: dict[str, Tensor]
    curves: dict[str, Curves]
    random_band: RandomBand | None
    examples: list[ExampleView]
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:14px}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}td.n{text-align:right;
font-variant-numeric:tabular-nums}table.kv>tbody>tr>td:first-child{font-weight:600;
white-space:nowrap}table table{margin:0;font-size:13px}.muted{color:#888}.notes{background:#fff6d5;
border-left:6px solid #e0a800;padding:.2em 1.2em;margin:1em 0;font-size:16px}img{max-width:100%;
display:block;margin:.5em 0}.cap{color:#444;font-size:14px;max-width:900px}"""

RANKING_UNITS = {
    "single-head ablation": "drop of the {metric} when only this head is ablated",
    "attention weight": "share of the final token's attention on the image tokens",
    "attribution patching": "first-order estimate of the {metric}'s drop when it is ablated",
}


def _fmt(v: Any) -> str:
    v = v.item() if isinstance(v, Tensor) and v.numel() == 1 else v
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float | np.floating):
        return "–" if math.isnan(v) else f"{v:.3g}"
    if isinstance(v, dict):
        return _nested(v)
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v) or '<span class="muted">none</span>'
    return '<span class="muted">default</span>' if v is None else html.escape(str(v))


def _nested(d: dict) -> str:
    """A dict as a two-column table; dict values become tables inside their cell."""
    return _table(None, [[html.escape(str(k)), _fmt(v)] for k, v in d.items()], cls="kv")


def _table(
    header: list[str] | None, rows: list[list[str]], numeric_from: int = 99, cls: str = ""
) -> str:
    """HTML table of already-escaped cells; columns from ``numeric_from`` on right-aligned."""
    th = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    td = [" class=n" * (j >= numeric_from) for j in range(max(map(len, rows), default=0))]
    body = ["".join(f"<td{td[j]}>{v}</td>" for j, v in enumerate(r)) for r in rows]
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>{th}{''.join(f'<tr>{r}</tr>' for r in body)}</table>"


def _p(text: str) -> str:
    return f'<p class="cap">{text}</p>'


def _save(fig: Figure, path: Path) -> str:
    """Save ``fig`` as PNG to ``path``; return an ``<img>`` tag embedding the same bytes."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    path.write_bytes(buf.getvalue())
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'


def _order(scores: np.ndarray) -> np.ndarray:
    """Flat head indices, most important first; ties keep layer-major order, NaN go last."""
    return np.nan_to_num(-np.asarray(scores), nan=np.inf).ravel().argsort(kind="stable")


def model_label(summary: dict[str, Any], result: AttributionResult) -> str:
    """A short model name: the run's label, else the last part of a path, else the name."""
    name = summary.get("model_label") or result.model_name or "head attribution"
    return Path(name).name if name.startswith(("/", ".", "~")) else name


def _summary(data: ReportData, pooled: bool) -> str:
    """The summary table and how to read the fit quality."""
    res, s, opts = data.result, data.summary, data.result.options
    n_ex, n_l, n_h = res.coef.shape
    rows = [["Model", f"{html.escape(model_label(s, res))}: {n_l} layers × {n_h} heads = "
                      f"{n_l * n_h} attention heads ranked"]]  # fmt: skip
    if "data" in s:
        data_name = "synthetic shapes (generated)" if s["data"] == "synthetic" else s["data"]
        rows.append(["Data", f"{html.escape(str(data_name))}, {s.get('n_examples', n_ex)} "
                             "example(s)"])  # fmt: skip
    if "accuracy" in s:
        n_all = s.get("n_examples")
        count = f" ({round(s['accuracy'] * n_all)} of {n_all})" if n_all else ""
        rows.append(["Accuracy", f"{s['accuracy']:.0%} answered correctly{count}; "
                                 f"{n_ex} example(s) attributed"])  # fmt: skip
    abl = opts.get("ablation", {})
    masks = [f"{opts['n_masks']} random masks per example"] if "n_masks" in opts else []
    if "rate" in opts:
        masks.append(f"each head ablated with probability {opts['rate'] * 100:g}%")
    if abl:
        masks.append(f"ablating a head replaces its {abl.get('source', 'image')} keys/values "
                     f"with the '{abl.get('baseline')}' baseline for the "
                     f"{abl.get('scope')} queries")  # fmt: skip
    if "method" in opts:
        masks.append(f"{opts['method']} fit of the answer's {opts.get('metric', 'metric')}")
    if masks:
        rows.append(["Masks and fit", html.escape("; ".join(masks))])
    med_r, med_r2 = float(res.pearson_r.nanmedian()), float(res.r2.nanmedian())
    fit = f"per example: median r = {_fmt(med_r)}, R² = {_fmt(med_r2)}"
    if pooled:
        fit = f"pooled: r = {_fmt(res.pooled_r)}, R² = {_fmt(res.pooled_r2)}; " + fit
    rows.append(["Fit on held-out masks", fit])
    used = "the pooled β" if pooled else f"the mean of the {n_ex} per-example β"
    how = (
        "r compares the metric the linear model predicts with the one measured, on masks "
        "never used to fit it. Per example, each example has its own β; the pooled fit shares "
        "one β per head across examples (each keeps its own intercept), so its r is lower "
        "when examples rely on different heads, and a low per-example r means the metric is "
        f"not linear in the ablated heads. The figures and tables below use {used}."
    )
    return _table(None, rows, cls="kv") + _p(how)


def _top_table(data: ReportData, top: list[tuple[int, int]], coef: np.ndarray, k: int) -> str:
    """Top heads: rank, name, β, score and rank under the other rankings, per-example top-k."""
    res, n_h = data.result, coef.shape[1]
    metric = res.options.get("metric", "metric")
    others = {n: to_numpy(v).reshape(-1, *coef.shape).mean(0) for n, v in data.rankings.items()}
    others.pop(HA, None)
    ranks = {n: _order(v).argsort().reshape(coef.shape) + 1 for n, v in others.items()}
    counts = Counter(divmod(int(j), n_h) for c in to_numpy(res.coef) for j in _order(-c)[:k])
    kinds = res.layer_kinds if res.layer_kinds and len(set(res.layer_kinds)) > 1 else None
    rows = [
        [str(i + 1), f"L{lh[0]}H{lh[1]}" + (f" ({kinds[lh[0]]})" if kinds else ""),
         _fmt(coef[lh])]
        + [f"{_fmt(others[n][lh])} (#{ranks[n][lh]})" for n in others]
        + [f"{counts[lh]} / {len(res.coef)}"]
        for i, lh in enumerate(top)
    ]
    beta = "β (pooled fit)" if res.pooled_coef is not None else "β (mean over examples)"
    extra = [f"{html.escape(n)}<br>score (#rank)" for n in others]
    mixed = [f"<b>head</b>: ({', '.join(sorted(set(kinds)))}) is the kind of attention the "
             "head does; all kinds are ranked together."] if kinds else []
    legend = [*mixed,
              f"<b>β</b>: the fitted change of the answer's {metric} (in {metric} units) when "
              "the head is ablated, the other heads as they are; negative = the head carries "
              "image information the answer needs. Heads are ranked by importance = −β.",
              f"<b>in per-example top-{k}</b>: in how many examples' own fits the head is among "
              f"the {k} most important."]  # fmt: skip
    units = {n: RANKING_UNITS.get(n, "its score").format(metric=metric) for n in others}
    legend += [f"<b>{html.escape(n)}</b>: {html.escape(u)}; larger = more important; #rank "
               "among all heads." for n, u in units.items()]  # fmt: skip
    items = "".join(f"<li>{x}</li>" for x in legend)
    header = ["rank", "head", f"{beta}, {html.escape(metric)}", *extra, f"in per-example top-{k}"]
    return _table(header, rows, 2) + f'<ul class="cap">{items}</ul>'


def _details(data: ReportData) -> str:
    """Options (nested), versions, timings and anything else the summary holds."""
    s, shown = data.summary, {"model_label", "data", "n_examples", "n_kept", "accuracy", "fit",
                              "top_heads", "top_heads_coef", "curves", "notes", "warnings",
                              "heads"}  # fmt: skip
    rows = [["options", _fmt(s.get("options", data.result.options))]]
    if "model" in s:
        rows.append(["model path", html.escape(str(s["model"]))])
    if s.get("wrong_examples"):
        rows.append(["wrongly answered", _fmt(s["wrong_examples"])])
    seconds = {k.removeprefix("seconds_"): f"{v:.1f} s" for k, v in s.items()
               if k.startswith("seconds_")}  # fmt: skip
    if seconds:
        rows.append(["time", _fmt(seconds)])
    skip = shown | {"options", "model", "wrong_examples"} | {f"seconds_{k}" for k in seconds}
    rows += [[html.escape(str(k)), _fmt(v)] for k, v in s.items() if k not in skip]
    return _table(None, rows, cls="kv")


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
    for old in fig_dir.glob("example_*.png"):  # a previous rendering's, maybe more of them
        old.unlink()
    n_ex, n_l, n_h = (res := data.result).coef.shape
    pooled = res.pooled_coef is not None
    r = res.pooled_r if pooled and res.pooled_r is not None else float(res.pearson_r.nanmedian())
    fit = "pooled fit" if pooled else f"mean of {n_ex} per-example fits"
    imp = to_numpy(res.scores(pooled))  # -β of the pooled fit, or of the mean per-example β
    top = [divmod(int(j), n_h) for j in _order(imp)[:n_top]]
    metric = html.escape(str(res.options.get("metric", "metric")))
    parts = [f"<h1>Head attribution: {html.escape(model_label(data.summary, res))}</h1>"]
    parts += ["<h2>Summary</h2>", _summary(data, pooled)]
    if data.notes:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in dict.fromkeys(data.notes))
        parts.append(f'<div class="notes"><h3>Notes</h3><ul>{notes}</ul></div>')
    title = f"Head-attribution importance −β\n({fit}; held-out r = {_fmt(r)})"
    parts += ["<h2>Head importance</h2>"]
    parts += [_save(importance_figure(imp, title, top[:10]), fig_dir / "importance.png")]
    parts += [_p(f"Importance = −β per layer and head, in {metric} units. Red: ablating the "
                 f"head's image access lowers the answer's {metric} (the head carries image "
                 "information to the answer); blue: ablating it raises it; grey: NaN. Numbers: "
                 f"rank of the {min(10, len(top))} most important heads.")]  # fmt: skip
    parts += [f"<h2>Top {len(top)} heads</h2>", _top_table(data, top, -imp, n_top)]
    if data.curves:
        fig = curves_figure(data.curves, data.random_band, n_l * n_h)
        need = [
            [html.escape(n)] + [str(c.heads_needed(0.8, w) or "not reached") for w in FC]
            for n, c in data.curves.items()
        ]
        parts += ["<h2>Faithfulness and completeness</h2>", _save(fig, fig_dir / "curves.png")]
        parts += [_p("Faithfulness: only the top-k heads of a ranking keep their image access; "
                     "completeness: only they lose it. 1 = the whole gap between the clean and "
                     "the all-heads-ablated metric. A better ranking gets there with fewer "
                     "heads. Table: smallest evaluated k reaching 0.8.")]  # fmt: skip
        parts += [_table(["ranking", *FC], need, 1)]
    if data.examples:
        parts += ["<h2>Examples</h2>"]
        parts += [_p("Attention from the final token to each image patch, per top head, scaled "
                     "to its maximum (brighter, more opaque = more; Σ = total attention on the "
                     "image). Cyan outline: the object's patches.")]  # fmt: skip
        for i, ex in enumerate(data.examples):
            parts.append(_save(example_figure(ex), fig_dir / f"example_{i}.png"))
    parts += ["<h2>Run details</h2>", _details(data)]
    head = f'<meta charset="utf-8"><title>lvlm_lens report</title><style>{CSS}</style>'
    page = f'<!DOCTYPE html><html lang="en"><head>{head}</head><body>{"".join(parts)}</body></html>'
    (path := fig_dir.parent / "report.html").write_text(page, encoding="utf-8")
    return path
