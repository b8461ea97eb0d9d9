"""Head attribution: random ablation masks -> masked runs -> a linear fit whose coefficients rank
the heads; the rankings it is compared with, and faithfulness / completeness curves.

Imports :mod:`lvlm_lens.interventions` and :mod:`lvlm_lens.model`, never analysis, viz or run.
"""

from lvlm_lens.attribution.comparison import compare_rankings, comparison_notes
from lvlm_lens.attribution.curves import (
    Curves,
    RandomBand,
    default_ks,
    evaluate_ranking,
    random_band,
)
from lvlm_lens.attribution.head_attribution import AttributionConfig, head_attribution
from lvlm_lens.attribution.rankings import (
    attention_weight,
    attribution_patching,
    single_head_ablation,
)
from lvlm_lens.attribution.regression import LinearFit, fit_linear, fit_pooled, sample_masks
from lvlm_lens.attribution.results import AttributionResult

__all__ = [
    "AttributionConfig",
    "AttributionResult",
    "Curves",
    "LinearFit",
    "RandomBand",
    "attention_weight",
    "attribution_patching",
    "compare_rankings",
    "comparison_notes",
    "default_ks",
    "evaluate_ranking",
    "fit_linear",
    "fit_pooled",
    "head_attribution",
    "random_band",
    "sample_masks",
    "single_head_ablation",
]
