"""Qwen3.5-MoE: Qwen3.5 (Gated-DeltaNet and output-gated full attention) with a sparse MLP in
every layer: a softmax top-k router over the experts plus a shared expert scaled by a sigmoid
gate. Tiny checkpoint: ``lvlm_lens/testing/tiny_qwen3_5.py``.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from lvlm_lens.model.config import DecoderSpec, MoESpec
from lvlm_lens.model.families.base import Family
from lvlm_lens.model.families.qwen2_vl import QWEN_HF_INPUTS, QwenVision, qwen_image_text
from lvlm_lens.model.families.qwen3_5 import qwen3_5_decoder


def qwen3_5_moe_decoder(hf_model: nn.Module) -> DecoderSpec:
    """Qwen3.5's decoder with a sparse MLP and a shared expert in every layer."""
    tc = hf_model.config.text_config
    moe = MoESpec(n_experts=tc.num_experts, top_k=tc.num_experts_per_tok,
                  d_expert=tc.moe_intermediate_size, layers=tuple(range(tc.num_hidden_layers)),
                  shared_expert=True)  # fmt: skip
    return replace(qwen3_5_decoder(hf_model), moe=moe)


BY_MODEL_TYPE = {
    "qwen3_5_moe": Family(
        "Qwen3.5-MoE", "Qwen3_5MoeForConditionalGeneration", text_types=("qwen3_5_moe_text",),
        checkpoints=("Qwen/Qwen3.5-35B-A3B", "Qwen/Qwen3.5-397B-A17B"),
        hf_inputs=QWEN_HF_INPUTS, vision=QwenVision, decoder_spec=qwen3_5_moe_decoder,
        image_text=qwen_image_text, tiny_kinds=("qwen3.5-moe",),
    ),
}  # fmt: skip
