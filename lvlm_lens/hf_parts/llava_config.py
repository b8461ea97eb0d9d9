"""LLaVA-1.5-shaped configs at any size: a CLIP vision tower, a GELU projector and a Llama.

Shared by the shipped toy LVLM (:func:`lvlm_lens.toy.toy_config`) and the benchmarks' random
models, so the two differ only in the sizes they pass.
"""

from __future__ import annotations

from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, PreTrainedTokenizerFast


def clip_llama_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    image_size: int,
    patch_size: int,
    vision_d_model: int,
    vision_d_mlp: int,
    vision_layers: int,
    vision_heads: int,
    vision_feature_layer: int,
    **text_kwargs: Any,
) -> LlavaConfig:
    """A ``LlavaConfig`` of ``(image_size / patch_size)^2`` image tokens (CLS dropped).

    Args:
        tokenizer: Gives the special token ids and the default vocabulary size.
        image_size: Image side in pixels; ``patch_size`` the vision patch side.
        vision_d_model: Width of the CLIP tower (also its projection size);
            ``vision_d_mlp``, ``vision_layers``, ``vision_heads`` its MLP width, depth and heads.
        vision_feature_layer: Tower layer whose features are projected (-2 as LLaVA-1.5).
        **text_kwargs: ``LlamaConfig`` fields (``hidden_size``, ``num_hidden_layers``, ...);
            ``num_key_value_heads`` defaults to ``num_attention_heads`` (no GQA) and
            ``vocab_size`` to the tokenizer's.
    """
    vision = CLIPVisionConfig(
        hidden_size=vision_d_model,
        intermediate_size=vision_d_mlp,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_d_model,
        attention_dropout=0.0,
    )
    text = dict(
        vocab_size=len(tokenizer),
        num_key_value_heads=text_kwargs.get("num_attention_heads"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    text.update(text_kwargs)
    return LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**text),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=vision_feature_layer,
        image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=False,
    )
