"""Analyses built on interventions and attribution (token-level flow, semantics vs appearance,
text-only vs image circuits, circuit discovery).

May import :mod:`lvlm_lens.viz`, :mod:`lvlm_lens.attribution`, :mod:`lvlm_lens.interventions`
and :mod:`lvlm_lens.model`; never :mod:`lvlm_lens.run`.
"""

from lvlm_lens.analysis.claims import (
    FLOW_EDGES,
    SemanticsResult,
    first_window,
    flow_sweep,
    object_vs_background,
    plot_flow,
    rank_agreement,
    semantic_vs_appearance,
    single_head_spread,
)

__all__ = [
    "FLOW_EDGES",
    "SemanticsResult",
    "first_window",
    "flow_sweep",
    "object_vs_background",
    "plot_flow",
    "rank_agreement",
    "semantic_vs_appearance",
    "single_head_spread",
]
