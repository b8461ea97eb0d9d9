"""Qwen3-VL: Qwen2-VL's vision side (plus DeepStack features), interleaved M-RoPE, q/k norms
and DeepStack injection in the decoder. Tiny checkpoint: ``lvlm_lens/testing/tiny_families.py``.
"""

from __future__ import annotations

from torch import nn

from lvlm_lens.model.config import DecoderSpec
from lvlm_lens.model.families.base import Family
from lvlm_lens.model.families.qwen2_vl import QWEN_HF_INPUTS, QwenVision, qwen_image_text


def qwen3_decoder(hf_model: nn.Module) -> DecoderSpec:
    """q/k norms, interleaved M-RoPE and DeepStack."""
    return DecoderSpec(qk_norm=True, rotary="mrope_interleaved", deepstack=True)


BY_MODEL_TYPE = {
    "qwen3_vl": Family(
        "Qwen3-VL", "Qwen3VLForConditionalGeneration", text_types=("qwen3_vl_text",),
        checkpoints=("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct",
                     "Qwen/Qwen3-VL-8B-Instruct"),
        hf_inputs=QWEN_HF_INPUTS, vision=QwenVision, decoder_spec=qwen3_decoder,
        image_text=qwen_image_text, tiny_kinds=("qwen3-vl",),
    ),
}  # fmt: skip
