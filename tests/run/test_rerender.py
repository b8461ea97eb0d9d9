"""``lvlm-lens report`` redraws exactly the report ``lvlm-lens attribute`` wrote, and the run
ends with a summary in the terminal."""

from __future__ import annotations

import json

import pytest

from lvlm_lens.run.cli import main
from tests.helpers import write_data_folder


@pytest.fixture(scope="module")
def finished_run(tiny_checkpoint, tmp_path_factory):
    folder = write_data_folder(tmp_path_factory.mktemp("data"), 3, bbox="2,2,12,12")
    out = tmp_path_factory.mktemp("run") / "run"
    argv = ["attribute", "--model", str(tiny_checkpoint("llava-llama")), "--data", str(folder),
            "--out", str(out), "--num-masks", "40", "--chunk-masks", "16", "--batch-size", "20",
            "--baseline", "blank", "--keep-wrong", "--n-random", "2"]  # fmt: skip
    return out, argv


def snapshot(out):
    files = {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")}
    return (out / "report.html").read_text(), files


def test_report_rerenders_the_same_page(finished_run, capsys):
    out, argv = finished_run
    assert main(argv) == 0
    printed = capsys.readouterr().out
    page, figures = snapshot(out)
    assert "<h2>Examples</h2>" in page and "example_2.png" in figures
    assert "curves.png" in figures
    (out / "report.html").unlink()
    for p in (out / "figures").iterdir():
        p.unlink()
    assert main(["report", "--out", str(out)]) == 0
    assert snapshot(out) == (page, figures)
    # the terminal summary: accuracy, fit, top heads, where the report is
    summary = json.loads((out / "summary.json").read_text())
    assert f"{round(summary['accuracy'] * 3)}/3 examples answered correctly" in printed
    assert "r = " in printed and "per example" in printed
    assert summary["top_heads"][0] in printed.split("top heads")[1]
    assert printed.strip().endswith(f"report: {out / 'report.html'}")
