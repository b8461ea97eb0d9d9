"""The tiny random Qwen3-VL-MoE checkpoint's config.

Shaped like ``Qwen/Qwen3-VL-30B-A3B-Instruct`` at a tiny size: the tiny Qwen3-VL (q/k norms,
interleaved M-RoPE, DeepStack, grouped-query attention) with untied embeddings and a sparse
MLP in every layer (``decoder_sparse_step=1``, no ``mlp_only_layers``): :data:`N_EXPERTS`
experts of width :data:`D_EXPERT`, each token routed to :data:`TOP_K` of them.
:mod:`~lvlm_lens.testing.tiny_families` builds and saves it.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen3VLConfig, Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

#: Experts per sparse layer, experts per token, one expert's width (the real one: 128, 8, 768).
N_EXPERTS, TOP_K, D_EXPERT = 8, 2, 32
#: Text-config fields only the MoE text config has.
MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size",
              "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef")  # fmt: skip


def split_moe_fields(text: dict[str, Any]) -> dict[str, Any]:
    """Pop the MoE-only fields out of ``text`` (text-config overrides); return them."""
    return {k: text.pop(k) for k in MOE_FIELDS if k in text}


def qwen3_vl_moe_config(dense: Qwen3VLConfig, moe: dict[str, Any]) -> tuple[Any, type]:
    """The tiny Qwen3-VL-MoE config from the tiny dense Qwen3-VL one, with ``moe`` (MoE
    text fields) over the defaults."""
    text = {k: v for k, v in dense.text_config.to_dict().items() if k != "model_type"}
    text.update(num_experts=N_EXPERTS, num_experts_per_tok=TOP_K, moe_intermediate_size=D_EXPERT,
                decoder_sparse_step=1, mlp_only_layers=[])  # fmt: skip
    text.update(moe)
    vision = {k: v for k, v in dense.vision_config.to_dict().items() if k != "model_type"}
    config = Qwen3VLMoeConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=dense.image_token_id,
        video_token_id=dense.video_token_id,
        vision_start_token_id=dense.vision_start_token_id,
        vision_end_token_id=dense.vision_end_token_id,
        tie_word_embeddings=dense.tie_word_embeddings,
    )
    return config, Qwen3VLMoeForConditionalGeneration
