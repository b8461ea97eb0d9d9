"""The hooked LVLM: HF vision side + a TransformerLens-hooked decoder, and the inputs it takes.

Lowest model layer: imports only :mod:`lvlm_lens.files`, :mod:`lvlm_lens.progress` and
:mod:`lvlm_lens.data` / :mod:`lvlm_lens.testing` if ever needed, never interventions,
attribution, analysis, viz or run.
"""

from lvlm_lens.model.config import DecoderSpec, LVLMConfig
from lvlm_lens.model.families import FAMILIES, SUPPORTED_LVLMS, SUPPORTED_TEXT_MODELS, Family
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import GROUP_NAMES, LVLMInput
from lvlm_lens.model.kv_cache import KVCache
from lvlm_lens.model.prepare import MIN_IMAGE_SIDE

__all__ = [
    "FAMILIES",
    "GROUP_NAMES",
    "DecoderSpec",
    "Family",
    "MIN_IMAGE_SIDE",
    "SUPPORTED_LVLMS",
    "SUPPORTED_TEXT_MODELS",
    "HookedLVLM",
    "KVCache",
    "LVLMConfig",
    "LVLMInput",
]
