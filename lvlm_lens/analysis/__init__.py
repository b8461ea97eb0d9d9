"""Analyses built on interventions and attribution: token-level flow, object vs background
tokens, semantics vs appearance, text-only vs image circuits, circuit discovery (activation,
path and attribution patching), and the statistics they share.

Each analysis returns a small result object with ``.to_frame()`` (a pandas DataFrame) and
``.plot()`` (a matplotlib Figure). May import :mod:`lvlm_lens.viz`,
:mod:`lvlm_lens.attribution`, :mod:`lvlm_lens.interventions` and :mod:`lvlm_lens.model`;
never :mod:`lvlm_lens.toy` or :mod:`lvlm_lens.run`.
"""

from lvlm_lens.analysis.circuits import (
    PatchingConfig,
    PatchingResult,
    activation_patching,
    attribution_patching,
)
from lvlm_lens.analysis.faithfulness import CurvesResult, random_rankings, ranking_curves
from lvlm_lens.analysis.flow import (
    DEFAULT_EDGES,
    FlowConfig,
    FlowResult,
    default_window,
    token_flow,
)
from lvlm_lens.analysis.path_patching import PathPatchingResult, path_patching
from lvlm_lens.analysis.ranking_comparison import (
    LayerDistribution,
    PairedComparison,
    layer_distribution,
    paired_comparison,
    per_example_curves,
    single_head_spread,
)
from lvlm_lens.analysis.regions import (
    RegionAblationResult,
    image_regions,
    object_patches,
    region_ablation,
)
from lvlm_lens.analysis.semantics import (
    SemanticsResult,
    attribution_vectors,
    class_heads,
    semantic_similarity,
)
from lvlm_lens.analysis.stats import (
    Estimate,
    bootstrap_ci,
    bootstrap_ratio,
    permutation_test,
    sign_flip_test,
    sign_test,
    spearman,
)
from lvlm_lens.analysis.text_vs_image import (
    TextVsImageConfig,
    TextVsImageResult,
    span_group,
    text_vs_image,
)

__all__ = [
    "DEFAULT_EDGES",
    "CurvesResult",
    "Estimate",
    "FlowConfig",
    "FlowResult",
    "LayerDistribution",
    "PairedComparison",
    "PatchingConfig",
    "PatchingResult",
    "PathPatchingResult",
    "RegionAblationResult",
    "SemanticsResult",
    "TextVsImageConfig",
    "TextVsImageResult",
    "activation_patching",
    "attribution_patching",
    "attribution_vectors",
    "bootstrap_ci",
    "bootstrap_ratio",
    "class_heads",
    "default_window",
    "image_regions",
    "layer_distribution",
    "object_patches",
    "paired_comparison",
    "path_patching",
    "per_example_curves",
    "permutation_test",
    "random_rankings",
    "ranking_curves",
    "region_ablation",
    "semantic_similarity",
    "sign_flip_test",
    "sign_test",
    "single_head_spread",
    "span_group",
    "spearman",
    "text_vs_image",
    "token_flow",
]
