"""Figures and the HTML report: the report's figures (``figures``), the analyses' heatmaps,
curves and similarity matrices in one style (``plots``), attention and logit lens over the
patch grid (``patches``, ``logit_lens``), a circuitsvis view with image tokens collapsed
(``attention_view``).

May import :mod:`lvlm_lens.attribution`, :mod:`lvlm_lens.interventions` and
:mod:`lvlm_lens.model`; never analysis or run. Every figure function returns the figure.
"""

from lvlm_lens.viz.attention_view import (
    CollapsedAttention,
    attention_view,
    collapsed_attention,
    image_groups,
)
from lvlm_lens.viz.figures import ExampleView, curves_figure, example_figure, importance_figure
from lvlm_lens.viz.logit_lens import LogitLens, logit_lens
from lvlm_lens.viz.patches import (
    ImageGrid,
    attention_overlay,
    draw_overlay,
    head_attention,
    image_grids,
    model_view,
)
from lvlm_lens.viz.plots import (
    bar_plot,
    head_heatmap,
    heatmaps,
    line_plot,
    new_figure,
    similarity_matrix,
)
from lvlm_lens.viz.report import ReportData, write_report

__all__ = [
    "CollapsedAttention",
    "ExampleView",
    "ImageGrid",
    "LogitLens",
    "ReportData",
    "attention_overlay",
    "attention_view",
    "bar_plot",
    "collapsed_attention",
    "curves_figure",
    "draw_overlay",
    "example_figure",
    "head_attention",
    "head_heatmap",
    "heatmaps",
    "image_grids",
    "image_groups",
    "importance_figure",
    "line_plot",
    "logit_lens",
    "model_view",
    "new_figure",
    "similarity_matrix",
    "write_report",
]
