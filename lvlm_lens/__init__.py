"""lvlm_lens: TransformerLens-style interpretability for vision-language models.

Layers, each importing only those below it (checked by import-linter): ``model`` (the hooked
LVLM and its inputs) <- ``interventions`` <- ``attribution`` <- ``viz`` <- ``analysis`` <-
``toy`` <- ``run``; ``data``, ``testing``, ``files`` and ``progress`` sit beside them at the
bottom.
The names below are the public API; import them from here.
"""

from lvlm_lens.analysis import (
    FlowConfig,
    PatchingConfig,
    TextVsImageConfig,
    activation_patching,
    attribution_patching,
    image_regions,
    layer_distribution,
    paired_comparison,
    path_patching,
    ranking_curves,
    region_ablation,
    semantic_similarity,
    text_vs_image,
    token_flow,
)
from lvlm_lens.attribution import (
    AttributionConfig,
    AttributionResult,
    compare_rankings,
    head_attribution,
)
from lvlm_lens.data import (
    Record,
    attribute_records,
    load_folder,
    load_hf_dataset,
    synthetic_records,
)
from lvlm_lens.interventions import (
    AblationEngine,
    BaselineKV,
    HeadAblation,
    ImageBaseline,
    ablate_heads,
    ablate_image_tokens,
    check_baseline,
    compute_baseline,
    get_metric,
    knockout,
    knockout_effect,
    knockout_window_sweep,
    mean_image_baseline,
    patch_sweep,
    window_layers,
)
from lvlm_lens.model import HookedLVLM, KVCache, LVLMConfig, LVLMInput
from lvlm_lens.progress import show_progress
from lvlm_lens.toy import evaluate_attributes, load_toy, toy_checkpoint_path
from lvlm_lens.viz import attention_overlay, attention_view, logit_lens

__all__ = [
    "AblationEngine",
    "AttributionConfig",
    "AttributionResult",
    "BaselineKV",
    "FlowConfig",
    "HeadAblation",
    "HookedLVLM",
    "ImageBaseline",
    "KVCache",
    "LVLMConfig",
    "LVLMInput",
    "PatchingConfig",
    "Record",
    "TextVsImageConfig",
    "ablate_heads",
    "ablate_image_tokens",
    "activation_patching",
    "attention_overlay",
    "attention_view",
    "attribute_records",
    "attribution_patching",
    "check_baseline",
    "compare_rankings",
    "compute_baseline",
    "evaluate_attributes",
    "get_metric",
    "head_attribution",
    "image_regions",
    "knockout",
    "knockout_effect",
    "knockout_window_sweep",
    "layer_distribution",
    "load_folder",
    "load_hf_dataset",
    "load_toy",
    "logit_lens",
    "mean_image_baseline",
    "paired_comparison",
    "patch_sweep",
    "path_patching",
    "ranking_curves",
    "region_ablation",
    "semantic_similarity",
    "show_progress",
    "synthetic_records",
    "text_vs_image",
    "token_flow",
    "toy_checkpoint_path",
    "window_layers",
]
__version__ = "0.1.0"
