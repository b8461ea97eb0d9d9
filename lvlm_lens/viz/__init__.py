"""Figures and the HTML report: heatmaps, curves, attention over the patch grid.

May import :mod:`lvlm_lens.attribution`, :mod:`lvlm_lens.interventions` and
:mod:`lvlm_lens.model`; never analysis or run. Every figure function returns the figure.
"""

from lvlm_lens.viz.figures import ExampleView, curves_figure, example_figure, importance_figure
from lvlm_lens.viz.report import ReportData, write_report

__all__ = [
    "ExampleView",
    "ReportData",
    "curves_figure",
    "example_figure",
    "importance_figure",
    "write_report",
]
