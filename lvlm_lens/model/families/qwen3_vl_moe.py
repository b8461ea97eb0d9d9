"""Qwen3-VL-MoE: Qwen3-VL (its vision side, interleaved M-RoPE, q/k norms, DeepStack) with a
sparse mixture-of-experts MLP in the layers HF makes sparse (``decoder_sparse_step``,
``mlp_only_layers``). Tiny checkpoint: ``lvlm_lens/testing/tiny_qwen3_vl_moe.py``.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from lvlm_lens.model.config import DecoderSpec, MoESpec
from lvlm_lens.model.families.base import Family, language_model
from lvlm_lens.model.families.qwen2_vl import QWEN_HF_INPUTS, QwenVision, qwen_image_text
from lvlm_lens.model.families.qwen3_vl import qwen3_decoder


def qwen3_moe_decoder(hf_model: nn.Module) -> DecoderSpec:
    """Qwen3-VL's decoder, with the sparse MLP of every layer whose HF MLP holds experts."""
    tc = hf_model.config.text_config
    layers = language_model(hf_model).layers
    sparse = tuple(i for i, layer in enumerate(layers) if hasattr(layer.mlp, "experts"))
    moe = MoESpec(n_experts=tc.num_experts, top_k=tc.num_experts_per_tok,
                  d_expert=tc.moe_intermediate_size, layers=sparse)  # fmt: skip
    return replace(qwen3_decoder(hf_model), moe=moe)


BY_MODEL_TYPE = {
    "qwen3_vl_moe": Family(
        "Qwen3-VL-MoE", "Qwen3VLMoeForConditionalGeneration", text_types=("qwen3_vl_moe_text",),
        checkpoints=("Qwen/Qwen3-VL-30B-A3B-Instruct", "Qwen/Qwen3-VL-235B-A22B-Instruct"),
        hf_inputs=QWEN_HF_INPUTS, vision=QwenVision, decoder_spec=qwen3_moe_decoder,
        image_text=qwen_image_text, tiny_kinds=("qwen3-vl-moe",),
    ),
}  # fmt: skip
