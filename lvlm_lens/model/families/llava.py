"""LLaVA-1.5: a CLIP tower over one center-cropped square image, a projector, a Llama /
Mistral / Qwen2 decoder. Its vision side, :class:`~lvlm_lens.model.vision.LlavaVision`, is
the shared base of the LLaVA families. Tiny checkpoint: ``lvlm_lens/testing/tiny.py``."""

from __future__ import annotations

from lvlm_lens.model.families.base import Family
from lvlm_lens.model.vision import LlavaVision

BY_MODEL_TYPE = {
    "llava": Family(
        "LLaVA-1.5", "LlavaForConditionalGeneration", ("llama", "mistral", "qwen2"),
        ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"), vision=LlavaVision,
        size_dependent_layout=False, cropped_grid=True, tiny_kinds=("llava-llama",),
    ),
}  # fmt: skip
