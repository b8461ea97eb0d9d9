"""lvlm_lens: TransformerLens-style interpretability for vision-language models.

Layers, each importing only those below it (checked by import-linter): ``model`` (the hooked
LVLM and its inputs) <- ``interventions`` <- ``attribution`` <- ``viz`` <- ``analysis`` <-
``toy`` <- ``run``; ``data``, ``testing``, ``files`` and ``progress`` sit beside them at the
bottom.
The names below are the public API; import them from here.
"""

from lvlm_lens.attribution import (
    AttributionConfig,
    AttributionResult,
    compare_rankings,
    head_attribution,
)
from lvlm_lens.data import Record, load_folder, load_hf_dataset, synthetic_records
from lvlm_lens.interventions import (
    AblationEngine,
    BaselineKV,
    HeadAblation,
    ablate_heads,
    ablate_image_tokens,
    compute_baseline,
    get_metric,
    knockout,
    knockout_effect,
    window_layers,
)
from lvlm_lens.model import HookedLVLM, KVCache, LVLMConfig, LVLMInput
from lvlm_lens.progress import show_progress
from lvlm_lens.toy import load_toy, toy_checkpoint_path

__all__ = [
    "AblationEngine",
    "AttributionConfig",
    "AttributionResult",
    "BaselineKV",
    "HeadAblation",
    "HookedLVLM",
    "KVCache",
    "LVLMConfig",
    "LVLMInput",
    "Record",
    "ablate_heads",
    "ablate_image_tokens",
    "compare_rankings",
    "compute_baseline",
    "get_metric",
    "head_attribution",
    "knockout",
    "knockout_effect",
    "load_folder",
    "load_hf_dataset",
    "load_toy",
    "show_progress",
    "synthetic_records",
    "toy_checkpoint_path",
    "window_layers",
]
__version__ = "0.1.0"
