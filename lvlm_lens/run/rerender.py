"""``lvlm-lens report``: render the report of a finished ``attribute`` run again from its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from lvlm_lens.attribution.curves import Curves, RandomBand
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.run.store import load_rankings
from lvlm_lens.viz.report import ReportData, write_report


def rerender(out: Path) -> Path:
    """Rebuild ``report.html`` from ``summary.json``, the attribution and the rankings."""
    if not (out / "summary.json").exists():
        raise ValueError(f"{out} has no summary.json: run `lvlm-lens attribute --out {out}` first")
    summary = json.loads((out / "summary.json").read_text())
    result = AttributionResult.load(out / "attribution")
    path = out / "rankings.safetensors"
    rankings = load_rankings(path) if path.exists() else {}
    nan = torch.tensor(math.nan)
    curves = {
        name: Curves(
            torch.tensor(c["ks"]),
            torch.tensor(c["faithfulness"]),
            torch.tensor(c["completeness"]),
            nan.expand(len(c["ks"])),
            nan.expand(len(c["ks"])),
            math.nan,
            math.nan,
        )
        for name, c in summary.get("curves", {}).items()
    }
    band = None
    if "random_band" in summary and curves:
        b = summary["random_band"]
        ks = next(iter(curves.values())).ks
        f, c = torch.tensor(b["faithfulness"]), torch.tensor(b["completeness"])
        band = RandomBand(ks, tuple(b["quantiles"]), f, c, f, c)
    data = ReportData(result, rankings, curves, band, [], summary, summary.get("notes", []))
    return write_report(out, data)
