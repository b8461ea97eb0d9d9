"""Tiny random HF checkpoints of every supported family, built offline for tests and benchmarks.

Beside the layers: imports no other lvlm_lens subpackage, so every layer may use it.
"""

from lvlm_lens.testing.tiny import TINY_KINDS, build_tiny_checkpoint, build_tiny_tokenizer

__all__ = ["TINY_KINDS", "build_tiny_checkpoint", "build_tiny_tokenizer"]
