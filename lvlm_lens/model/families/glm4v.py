"""GLM-4.1V (``Glm4vForConditionalGeneration``): a ViT over native-resolution patches with a
2x2 downsampling merger (Qwen2-VL's layout), and a GLM-4 decoder: 3-D RoPE over ``(t, h, w)``
positions, partial (half of ``d_head``) and rotating adjacent pairs of dimensions, sandwich
norms (after attention and after the MLP), q/k/v biases and a fused ``gate_up_proj`` MLP.
Still images only: a prompt holding a video marker is refused. Tiny checkpoint:
``lvlm_lens/testing/tiny_glm4v.py``.

As for Qwen2-VL, the image embeddings, token counts and positions come from the HF model's
own code (``get_image_features``, ``get_rope_index``); only the bookkeeping is here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lvlm_lens.model.config import DecoderSpec
from lvlm_lens.model.families.base import Family, ImageText, token_name
from lvlm_lens.model.families.qwen2_vl import QWEN_HF_INPUTS, QwenVision

#: HF's GLM-4 decoder layer names its norms: after attention, before the MLP, after the MLP.
GLM_SANDWICH = ("post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm")
#: HF's Glm4vProcessor writes a video as frames between these markers (and ``<|video|>`` in
#: the chat template): not supported.
VIDEO_MARKERS = ("<|video|>", "<|begin_of_video|>", "<|end_of_video|>")

#: GLM-4.1V's vision side: Qwen2-VL's bookkeeping (``image_grid_thw``, merged row-major grid,
#: HF's ``get_rope_index`` for the ``(t, h, w)`` positions), GLM's own tower and merger.
Glm4vVision = QwenVision


def glm4v_decoder(hf_model: nn.Module) -> DecoderSpec:
    """GLM-4's decoder: M-RoPE rotating adjacent pairs, sandwich norms, fused gate/up MLP."""
    return DecoderSpec(rotary="mrope", rotary_pairs=True, sandwich_norms=True,
                       sandwich_norm_names=GLM_SANDWICH, fused_gate_up=True)  # fmt: skip


def glm4v_image_text(config: Any, tokenizer: Any) -> ImageText:
    """``<|image|>``, written ``<|begin_of_image|><|image|><|end_of_image|>`` for the generic
    placeholder (as GLM-4.1V's chat template writes an image); the end marker closes it."""
    token = token_name(tokenizer, config.image_token_id)
    start = token_name(tokenizer, config.image_start_token_id)
    end = token_name(tokenizer, config.image_end_token_id)
    return ImageText(token, f"{start}{token}{end}", token, (end,), refused=VIDEO_MARKERS)


BY_MODEL_TYPE = {
    "glm4v": Family(
        "GLM-4.1V", "Glm4vForConditionalGeneration", text_types=("glm4v_text",),
        checkpoints=("zai-org/GLM-4.1V-9B-Thinking", "zai-org/GLM-4.1V-9B-Base"),
        hf_inputs=QWEN_HF_INPUTS, vision=Glm4vVision, decoder_spec=glm4v_decoder,
        image_text=glm4v_image_text, tiny_kinds=("glm4v",),
    ),
}  # fmt: skip
