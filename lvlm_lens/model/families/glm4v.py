"""GLM-4.1V (``Glm4vForConditionalGeneration``): a ViT over native-resolution patches with a
2x2 downsampling merger (Qwen2-VL's layout), and a GLM-4 decoder: 3-D RoPE over ``(t, h, w)``
positions, partial (half of ``d_head``) and rotating adjacent pairs of dimensions, sandwich
norms (after attention and after the MLP), q/k/v biases and a fused ``gate_up_proj`` MLP.
Still images only: a prompt holding a video marker is refused. GLM-4.5V
(``Glm4vMoeForConditionalGeneration``) has the same vision side and image text, a decoder with
RoPE over the two halves, plain pre-norms and a DeepSeek-style sparse MLP
(:func:`glm4v_moe_decoder`). Tiny checkpoints: ``lvlm_lens/testing/tiny_glm4v.py``.

As for Qwen2-VL, the image embeddings, token counts and positions come from the HF model's
own code (``get_image_features``, ``get_rope_index``); only the bookkeeping is here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lvlm_lens.model.config import DecoderSpec, MoESpec
from lvlm_lens.model.families.base import Family, ImageText, token_name
from lvlm_lens.model.families.qwen2_vl import QWEN_HF_INPUTS, QwenVision

#: HF's GLM-4 decoder layer names its norms: after attention, before the MLP, after the MLP.
GLM_SANDWICH = ("post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm")
#: The config's video token ids (``<|video|>``, ``<|begin_of_video|>``, ``<|end_of_video|>``):
#: HF's Glm4vProcessor writes a video as frames between the markers; not supported.
VIDEO_IDS = ("video_token_id", "video_start_token_id", "video_end_token_id")

#: GLM-4.1V's vision side: Qwen2-VL's bookkeeping (``image_grid_thw``, merged row-major grid,
#: HF's ``get_rope_index`` for the ``(t, h, w)`` positions), GLM's own tower and merger.
Glm4vVision = QwenVision


def glm4v_decoder(hf_model: nn.Module) -> DecoderSpec:
    """GLM-4's decoder: M-RoPE rotating adjacent pairs, sandwich norms, fused gate/up MLP."""
    return DecoderSpec(rotary="mrope", rotary_pairs=True, sandwich_norms=True,
                       sandwich_norm_names=GLM_SANDWICH, fused_gate_up=True)  # fmt: skip


def glm4v_moe_decoder(hf_model: nn.Module) -> DecoderSpec:
    """GLM-4.5V's decoder: GLM-4.1V's M-RoPE over the two halves (not pairs), no sandwich
    norms, dense gated MLPs in the first ``first_k_dense_replace`` layers and sparse ones after
    them: a sigmoid router with a choice bias, group-limited top-k, renormalised and scaled
    weights, plus an ungated shared MLP."""
    tc = hf_model.config.text_config
    moe = MoESpec(
        n_experts=tc.n_routed_experts, top_k=tc.num_experts_per_tok,
        d_expert=tc.moe_intermediate_size,
        layers=tuple(range(tc.first_k_dense_replace, tc.num_hidden_layers)),
        renormalize=tc.norm_topk_prob, shared_expert=True, shared_module="shared_experts",
        shared_gated=False, scoring="sigmoid", router_fp32=True, choice_bias=True,
        n_group=tc.n_group,
        topk_group=tc.topk_group, routed_scaling=tc.routed_scaling_factor,
    )  # fmt: skip
    return DecoderSpec(rotary="mrope", moe=moe)


def glm4v_image_text(config: Any, tokenizer: Any) -> ImageText:
    """``<|image|>``, written ``<|begin_of_image|><|image|><|end_of_image|>`` for the generic
    placeholder (as GLM-4.1V's chat template writes an image); the end marker closes it; a
    prompt holding a video token or marker is refused."""
    token = token_name(tokenizer, config.image_token_id)
    start = token_name(tokenizer, config.image_start_token_id)
    end = token_name(tokenizer, config.image_end_token_id)
    video = tuple(token_name(tokenizer, getattr(config, name)) for name in VIDEO_IDS)
    return ImageText(token, f"{start}{token}{end}", token, (end,), refused=video)


BY_MODEL_TYPE = {
    "glm4v": Family(
        "GLM-4.1V", "Glm4vForConditionalGeneration", text_types=("glm4v_text",),
        checkpoints=("zai-org/GLM-4.1V-9B-Thinking", "zai-org/GLM-4.1V-9B-Base"),
        hf_inputs=QWEN_HF_INPUTS, vision=Glm4vVision, decoder_spec=glm4v_decoder,
        image_text=glm4v_image_text, tiny_kinds=("glm4v",),
    ),
    "glm4v_moe": Family(
        "GLM-4.5V", "Glm4vMoeForConditionalGeneration", text_types=("glm4v_moe_text",),
        checkpoints=("zai-org/GLM-4.5V",),
        hf_inputs=QWEN_HF_INPUTS, vision=Glm4vVision, decoder_spec=glm4v_moe_decoder,
        image_text=glm4v_image_text, tiny_kinds=("glm4v-moe",),
    ),
}  # fmt: skip
