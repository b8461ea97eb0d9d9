"""Interventions on the hooked LVLM: head ablation and its baselines, the fast masked-run engine,
attention knockout, image-token ablation, activation patching, prefix-sharing patching and
knockout sweeps, and the answer metrics.

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
from lvlm_lens.interventions.metrics import METRICS, get_metric, metric_change
from lvlm_lens.interventions.patching import patch_attn_heads, patch_mlp_out, patch_resid
from lvlm_lens.interventions.sweeps import (
    SweepResult,
    image_rows,
    knockout_window_sweep,
    patch_sweep,
    single_positions,
    token_groups,
)
from lvlm_lens.interventions.token_ablation import (
    ImageBaseline,
    ablate_image_tokens,
    mean_image_baseline,
    mean_image_token,
)

__all__ = [
    "BASELINES",
    "METRICS",
    "SCOPES",
    "AblationEngine",
    "BaselineCheck",
    "BaselineKV",
    "HeadAblation",
    "ImageBaseline",
    "SweepResult",
    "ablate_heads",
    "ablate_image_tokens",
    "check_baseline",
    "compute_baseline",
    "get_metric",
    "head_ablation_hooks",
    "image_rows",
    "knockout",
    "knockout_effect",
    "knockout_hooks",
    "knockout_window_sweep",
    "mean_image_baseline",
    "mean_image_token",
    "metric_change",
    "patch_attn_heads",
    "patch_mlp_out",
    "patch_resid",
    "patch_sweep",
    "run_reference",
    "single_positions",
    "token_groups",
    "window_layers",
]
