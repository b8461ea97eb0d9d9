"""HTML report: self-contained page, figures as PNGs and data URIs, NaN-robust."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lvlm_lens.attribution.curves import Curves, default_ks, evaluate_ranking, random_band
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.viz.report import ExampleView, ReportData, write_report

NOTE = "head attribution did not beat single-head ablation on completeness"


def make_data(n_layers: int, n_heads: int, nan_curve: bool = False, pooled: bool = True):
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(n_layers, n_heads, generator=gen, dtype=torch.float64) ** 4

    def run_masks(masks):
        return 1.0 + (weights * ~masks).sum((1, 2))

    coef = -(weights + 0.05 * torch.randn(3, n_layers, n_heads, generator=gen, dtype=torch.float64))
    kw = dict(pooled_coef=-weights, pooled_r=0.93, pooled_r2=0.86) if pooled else {}
    result = AttributionResult(
        coef,
        torch.ones(3),
        torch.tensor([0.9, 0.8, math.nan]),
        torch.tensor([0.8, 0.6, 0.7]),
        options={"metric": "logit", "rate": 0.05},
        model_name="toy-llava",
        **kw,
    )
    noisy = weights + 0.3 * torch.rand(n_layers, n_heads, generator=gen, dtype=torch.float64)
    rankings = {"head attribution": weights, "single-head ablation": noisy,
                "attention weight": torch.rand(n_layers, n_heads, generator=gen)}  # fmt: skip
    ks = default_ks(n_layers * n_heads, 12)
    curves = {k: evaluate_ranking(run_masks, v, ks) for k, v in rankings.items()}
    if nan_curve:
        c = curves["attention weight"]
        curves["attention weight"] = Curves(c.ks, c.faithfulness * math.nan,
                                            c.completeness * math.nan, *[None] * 4)  # fmt: skip
    band = random_band(run_masks, n_layers, n_heads, ks, n_random=5)
    rng = np.random.default_rng(0)
    examples = []
    for i, (grid, size) in enumerate([(24, (336, 336)), (4, (120, 96))]):
        yy, xx = np.mgrid[: size[1], : size[0]] / max(size)
        img = np.stack([xx, yy, 0.5 + 0 * xx], -1) * 200
        img[size[1] // 4 : size[1] // 2, size[0] // 4 : 2 * size[0] // 3] = (230, 180, 40)
        att = {f"L{a}H{b}": rng.random((grid, grid)) ** 3 for a, b in [(1, 2), (0, 3), (2, 1)]}
        obj = np.zeros((grid, grid), bool)
        obj[grid // 4 : grid // 2, grid // 4 : 2 * grid // 3] = True
        image = Image.fromarray(img.astype(np.uint8))
        examples.append(ExampleView(image, "dog", ["dog", "cat"][i], att, [obj, None][i]))
    summary = {"accuracy": 0.75, "timings": {"masks": 12.5}, "versions": {"torch": "2.x"}}
    return ReportData(result, rankings, curves, band, examples, summary, [NOTE, "<b>escaped</b>"])


@pytest.mark.parametrize("shape", [(4, 8), (32, 32)])
def test_report(tmp_path, shape):
    data = make_data(*shape, nan_curve=shape == (4, 8))
    path = write_report(tmp_path, data, n_top=10)
    assert path == tmp_path / "report.html" and path.exists()
    page = path.read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert NOTE in page and "&lt;b&gt;escaped&lt;/b&gt;" in page and 'class="notes"' in page
    for layer, head in data.result.top_heads(10):
        assert re.search(rf"<td>L{layer}H{head}</td>", page)
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 3
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"importance.png", "curves.png", "example_0.png", "example_1.png"} <= names
    for p in pngs:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
        assert arr.shape[0] > 100 and arr.shape[1] > 100
        assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 10, p.name


def test_report_without_pooled_fit_curves_or_examples(tmp_path):
    data = make_data(3, 4, pooled=False)
    data.result.coef[:, 1, 2] = math.nan  # NaN head: grey cell, "–" in the table
    data.rankings["attention weight"][0, 0] = math.nan
    data.curves, data.random_band, data.examples, data.notes = {}, None, [], []
    page = write_report(tmp_path / "sub", data).read_text()
    assert 'class="notes"' not in page and "β (mean over examples)" in page
    assert len(re.findall(r"data:image/png", page)) == 1
    assert "<td>L1H2</td><td class=n>–</td>" in page  # NaN head ranked last
    assert page.index("<td>L1H2</td>") > page.index("<td>L1H3</td>")


def test_report_reads_as_a_page_not_a_dump(tmp_path):
    data = make_data(4, 8)
    data.result.model_name = "/home/someone/checkpoints/llava-toy"
    curve = [0.123456789, 0.2468013579]
    data.summary = {
        "model": "/home/someone/checkpoints/llava-toy",
        "data": "synthetic",
        "n_examples": 4,
        "accuracy": 0.75,
        "curves": {"head attribution": {"ks": [0, 1], "faithfulness": curve}},
        "options": {"n_examples": 4, "attribution": {"rate": 0.05, "ablation": {"scope": "text"}}},
        "notes": [NOTE],
    }
    data.notes = [NOTE, NOTE]
    page = write_report(tmp_path, data).read_text()
    title = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert "llava-toy" in title and "/home" not in title
    assert page.count(NOTE) == 1  # notes once: not in a table, not twice
    assert "0.1235" not in page and "0.2468" not in page  # curves as figures only
    assert re.search(r"<td>attribution</td><td><table class=\"kv\">.*<td>ablation</td>", page)
    assert "pooled" in page and "per example" in page  # how to read both r
    assert "importance = −β" in page and "logit units" in page


def test_top_heads_table_names_the_kind_when_a_model_mixes_kinds(tmp_path):
    """Self- and cross-attention heads ranked together say which is which; a model with one
    kind keeps plain head names."""
    data = make_data(4, 8)
    data.result.layer_kinds = ["self", "cross", "self", "cross"]
    page = write_report(tmp_path / "mixed", data, n_top=10).read_text()
    for layer, head in data.result.top_heads(10):
        kind = data.result.layer_kinds[layer]
        assert re.search(rf"<td>L{layer}H{head} \({kind}\)</td>", page)
    data.result.layer_kinds = ["self"] * 4
    page = write_report(tmp_path / "plain", data, n_top=10).read_text()
    for layer, head in data.result.top_heads(10):
        assert re.search(rf"<td>L{layer}H{head}</td>", page)


def _kv_row(page: str, key: str) -> str:
    """The value cell of the summary table's ``key`` row."""
    return re.search(rf"<tr><td>{key}</td><td>(.*?)</td></tr>", page).group(1)


def test_summary_counts_the_runs_examples_not_the_attributed_ones(tmp_path):
    """The summary says how many examples the run had (``summary["n_examples"]``: 24, of which
    18 = 0.75 * 24 answered right) and how many were attributed (the fit's 3); without the key,
    the fit's count. Reading another key (a misspelled ``n_examples``) falls back to 3 examples
    and drops the "18 of 24"."""
    data = make_data(3, 4)
    data.summary = {"data": "synthetic", "n_examples": 24, "accuracy": 0.75}
    page = write_report(tmp_path / "run", data).read_text()
    assert _kv_row(page, "Data") == "synthetic shapes (generated), 24 example(s)"
    assert _kv_row(page, "Accuracy") == "75% answered correctly (18 of 24); 3 example(s) attributed"
    data.summary = {"data": "my_set.jsonl", "accuracy": 0.5}
    page = write_report(tmp_path / "fit", data).read_text()
    assert _kv_row(page, "Data") == "my_set.jsonl, 3 example(s)"
    assert _kv_row(page, "Accuracy") == "50% answered correctly; 3 example(s) attributed"


def test_saved_figures_have_the_sizes_and_resolution_they_are_drawn_at(tmp_path):
    """Each PNG is its figure size times its dpi: curves 11 x 4.8 in at 120 dpi = 1320 x 576
    pixels; the importance map of 3 x 4 heads (5 x 3.2 in, the minimum size) at 120 dpi =
    600 x 384; an example of 4 panels of a 120 x 96 image (2.6 in each; height
    (2.6 * 96 / 120 + 0.3) + 0.4 in) at 110 dpi = 1144 x 305 pixels (305.8 rounded down).
    Matplotlib's default (100 dpi) would give 1100 x 480 curves."""
    data = make_data(3, 4)
    data.examples = data.examples[1:]
    write_report(tmp_path, data)
    for name, size in [("curves", (1320, 576)), ("importance", (600, 384)),
                       ("example_0", (1144, 305))]:  # fmt: skip
        with Image.open(tmp_path / "figures" / f"{name}.png") as im:
            assert im.size == size, name
            assert np.allclose(im.info["dpi"], 120 if name != "example_0" else 110, atol=0.01)
