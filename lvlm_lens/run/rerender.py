"""``lvlm-lens report``: draw the report of an ``attribute`` run from its files."""

from __future__ import annotations

from pathlib import Path

from lvlm_lens.run.report_files import load_report_inputs
from lvlm_lens.viz.report import write_report


def rerender(out: Path) -> Path:
    """Write ``out/report.html`` (and ``out/figures``) from the run's files: the same page
    ``attribute`` drew from its :class:`~lvlm_lens.run.outcome.RunOutcome` in memory."""
    return write_report(out, load_report_inputs(Path(out)))
