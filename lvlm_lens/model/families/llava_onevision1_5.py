"""LLaVA-OneVision-1.5: a RICE ViT over native-resolution patches (one CLS token per image,
dropped before the merger) and Qwen's 2x2 patch merger, so Qwen2-VL's vision side and image
text, in front of a plain Qwen3 decoder (q/k norms) with 1-D positions (no M-RoPE). Tiny
checkpoint: ``lvlm_lens/testing/tiny_llava_onevision1_5.py``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lvlm_lens.model.config import DecoderSpec
from lvlm_lens.model.families.base import Family
from lvlm_lens.model.families.qwen2_vl import QwenVision, qwen_image_text


class OneVision15Vision(QwenVision):
    """Qwen2-VL's vision side (``image_grid_thw`` patches, merged ``(h/m) x (w/m)`` grid), with
    the decoder's plain 1-D positions."""

    def rope_positions(self, input_ids: Tensor, attention_mask: Tensor, inp: Any) -> None:
        """``None``: 1-D positions, ``cumsum(mask) - 1``."""
        return None


def qwen3_text_decoder(hf_model: nn.Module) -> DecoderSpec:
    """A Qwen3 decoder: q/k norms, 1-D RoPE."""
    return DecoderSpec(qk_norm=True)


BY_MODEL_TYPE = {
    "llava_onevision1_5": Family(
        "LLaVA-OneVision-1.5", "LlavaOnevision15ForConditionalGeneration", text_types=("qwen3",),
        checkpoints=("Deep-VLM/LLaVA-OneVision-1.5-4B-Instruct-hf",
                     "Deep-VLM/LLaVA-OneVision-1.5-8B-Instruct-hf"),
        hf_inputs=("image_grid_thw",), vision=OneVision15Vision, decoder_spec=qwen3_text_decoder,
        image_text=qwen_image_text, tiny_kinds=("llava-onevision-1.5",),
    ),
}  # fmt: skip
