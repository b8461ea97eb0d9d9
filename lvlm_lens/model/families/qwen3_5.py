"""Qwen3.5: Gated-DeltaNet linear-attention layers (:mod:`~lvlm_lens.model.linear_attention`)
between output-gated full-attention layers (q/k norms, partial interleaved M-RoPE), ``1 + w``
norms, on Qwen3-VL's vision side without DeepStack. Tiny checkpoint:
``lvlm_lens/testing/tiny_qwen3_5.py``.
"""

from __future__ import annotations

from torch import nn

from lvlm_lens.model.config import DecoderSpec, LinearAttentionSpec
from lvlm_lens.model.families.base import Family
from lvlm_lens.model.families.qwen2_vl import QWEN_HF_INPUTS, QwenVision, qwen_image_text

#: HF's ``layer_types`` entry of a Gated-DeltaNet layer.
LINEAR = "linear_attention"


def qwen3_5_decoder(hf_model: nn.Module) -> DecoderSpec:
    """``1 + w`` norms, q/k norms, output-gated attention, interleaved M-RoPE and the
    linear-attention layers of the config's ``layer_types``."""
    tc = hf_model.config.text_config
    lin = LinearAttentionSpec(
        n_k_heads=tc.linear_num_key_heads, n_v_heads=tc.linear_num_value_heads,
        d_k=tc.linear_key_head_dim, d_v=tc.linear_value_head_dim,
        conv_kernel=tc.linear_conv_kernel_dim,
        layers=tuple(i for i, t in enumerate(tc.layer_types) if t == LINEAR),
    )  # fmt: skip
    return DecoderSpec(norm_offset=1.0, qk_norm=True, rotary="mrope_interleaved",
                       attn_output_gate=True, linear_attention=lin)  # fmt: skip


BY_MODEL_TYPE = {
    "qwen3_5": Family(
        "Qwen3.5", "Qwen3_5ForConditionalGeneration", text_types=("qwen3_5_text",),
        checkpoints=("Qwen/Qwen3.5-27B", "Qwen/Qwen3.5-9B"),
        hf_inputs=QWEN_HF_INPUTS, vision=QwenVision, decoder_spec=qwen3_5_decoder,
        image_text=qwen_image_text, tiny_kinds=("qwen3.5",),
    ),
}  # fmt: skip
