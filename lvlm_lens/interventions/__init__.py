"""Interventions on the hooked LVLM: head ablation and its baselines, the fast masked-run engine,
attention knockout, image-token ablation, activation patching, and the answer metrics.

Imports only :mod:`lvlm_lens.model` (and the layers beside it), never attribution or above.
"""

from lvlm_lens.interventions.ablation import (
    BASELINES,
    SCOPES,
    BaselineKV,
    HeadAblation,
    ablate_heads,
    compute_baseline,
    head_ablation_hooks,
)
from lvlm_lens.interventions.baseline_check import BaselineCheck, check_baseline
from lvlm_lens.interventions.engine import AblationEngine, run_reference
from lvlm_lens.interventions.knockout import (
    knockout,
    knockout_effect,
    knockout_hooks,
    window_layers,
)
from lvlm_lens.interventions.metrics import METRICS, get_metric
from lvlm_lens.interventions.patching import patch_attn_heads, patch_mlp_out, patch_resid
from lvlm_lens.interventions.token_ablation import ablate_image_tokens, mean_image_token

__all__ = [
    "BASELINES",
    "METRICS",
    "SCOPES",
    "AblationEngine",
    "BaselineCheck",
    "BaselineKV",
    "HeadAblation",
    "ablate_heads",
    "ablate_image_tokens",
    "check_baseline",
    "compute_baseline",
    "get_metric",
    "head_ablation_hooks",
    "knockout",
    "knockout_effect",
    "knockout_hooks",
    "mean_image_token",
    "patch_attn_heads",
    "patch_mlp_out",
    "patch_resid",
    "run_reference",
    "window_layers",
]
