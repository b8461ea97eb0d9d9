"""Tiny random HF checkpoints of every supported family, built offline for tests and benchmarks.

Beside the layers: imports no other lvlm_lens subpackage, so every layer may use it.
"""

from lvlm_lens.testing.tiny import (
    LLAVA_KINDS,
    TINY_KINDS,
    build_tiny_checkpoint,
    build_tiny_tokenizer,
)
from lvlm_lens.testing.tiny_families import FAMILY_KINDS

__all__ = [
    "FAMILY_KINDS",
    "LLAVA_KINDS",
    "TINY_KINDS",
    "build_tiny_checkpoint",
    "build_tiny_tokenizer",
]
