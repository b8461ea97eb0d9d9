"""SmolVLM2 (``SmolVLMForConditionalGeneration``): Idefics3's layout under its own class, a
SmolVLM vision tower over square tiles plus a global image, pixel shuffle, a linear
projection and a Llama decoder (``model.text_model``). Still images only: SmolVLM2's video
frames are not supported. Tiny checkpoint: ``lvlm_lens/testing/tiny_smolvlm.py``."""

from __future__ import annotations

from lvlm_lens.model.families.base import Family, qk_norm_if_present
from lvlm_lens.model.families.idefics3 import Idefics3Vision

#: HF's ``SmolVLMProcessor`` writes an image's tiles, their ``<row_r_col_c>`` markers and the
#: global image as ``Idefics3Processor`` does, and the towers take the same inputs, so the
#: vision side is Idefics3's.
SmolVLMVision = Idefics3Vision


BY_MODEL_TYPE = {
    "smolvlm": Family(
        "SmolVLM2", "SmolVLMForConditionalGeneration", ("llama",),
        ("HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
         "HuggingFaceTB/SmolVLM2-2.2B-Instruct"),
        hf_inputs=("pixel_attention_mask",), vision=SmolVLMVision,
        decoder_spec=qk_norm_if_present, tiny_kinds=("smolvlm2",),
    ),
}  # fmt: skip
