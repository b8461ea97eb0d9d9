"""lvlm_lens: TransformerLens-style interpretability for LLaVA-family vision-language models."""

from lvlm_lens.config import LVLMConfig
from lvlm_lens.inputs import LVLMInput
from lvlm_lens.kv_cache import KVCache
from lvlm_lens.model import HookedLVLM

__all__ = ["HookedLVLM", "KVCache", "LVLMConfig", "LVLMInput"]
__version__ = "0.1.0"
