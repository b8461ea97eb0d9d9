"""Small HF parts for LVLMs built from scratch: a word-level tokenizer, the LLaVA-1.5 chat
template and a LLaVA-1.5-shaped config at any size.

Shared by the shipped toy (:mod:`lvlm_lens.toy`), the tiny test checkpoints
(:mod:`lvlm_lens.testing`) and the benchmarks. Beside the layers: imports no other lvlm_lens
subpackage, so every layer may use it.
"""

from lvlm_lens.hf_parts.llava_config import clip_llama_config
from lvlm_lens.hf_parts.tokenizer import LLAVA_CHAT_TEMPLATE, SPECIAL_TOKENS, word_level_tokenizer

__all__ = ["LLAVA_CHAT_TEMPLATE", "SPECIAL_TOKENS", "clip_llama_config", "word_level_tokenizer"]
