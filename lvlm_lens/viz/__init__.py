"""Figures and the HTML report: heatmaps, curves and similarity matrices in one style,
attention and logit lens over the patch grid, a circuitsvis view with image tokens collapsed.

May import :mod:`lvlm_lens.attribution`, :mod:`lvlm_lens.interventions` and
:mod:`lvlm_lens.model`; never analysis or run. Every figure function returns the figure.
"""

from lvlm_lens.viz.attention_view import (
    CollapsedAttention,
    attention_view,
    collapsed_attention,
    image_groups,
)
from lvlm_lens.viz.figures import (
    bar_plot,
    head_heatmap,
    heatmaps,
    line_plot,
    new_figure,
    similarity_matrix,
)
from lvlm_lens.viz.logit_lens import LogitLens, logit_lens
from lvlm_lens.viz.patches import (
    ImageGrid,
    attention_overlay,
    draw_overlay,
    head_attention,
    image_grids,
    model_view,
)
from lvlm_lens.viz.report import ExampleView, ReportData, write_report

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
    "draw_overlay",
    "head_attention",
    "head_heatmap",
    "heatmaps",
    "image_grids",
    "image_groups",
    "line_plot",
    "logit_lens",
    "model_view",
    "new_figure",
    "similarity_matrix",
    "write_report",
]
