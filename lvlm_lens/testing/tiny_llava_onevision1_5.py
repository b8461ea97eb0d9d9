"""The tiny random LLaVA-OneVision-1.5 checkpoint's config and image processor.

Shaped like ``Deep-VLM/LLaVA-OneVision-1.5-4B-Instruct-hf`` at a tiny size: a RICE ViT over
native-resolution patches (no temporal patches, one CLS token per image, 2-D RoPE), a 2x2 patch
merger, then a Qwen3 decoder (q/k norms, grouped-query attention, untied embeddings) with plain
1-D positions. Its special tokens and chat template are the Qwen ones.
:mod:`~lvlm_lens.testing.tiny_families` builds and saves it.
"""

from __future__ import annotations

from typing import Any

from transformers import LlavaOnevision15Config, LlavaOnevision15ForConditionalGeneration
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

#: The ViT's patch side and the merge (a 20x28 image: 10x14 patches, 5x7 = 35 tokens).
OV15_PATCH, OV15_MERGE = 2, 2


def llava_onevision1_5_config(
    text: dict[str, Any], ids: dict[str, int], vision_overrides: dict[str, Any]
) -> tuple[Any, type]:
    """The tiny config (``text``: Qwen3 text fields; ``ids``: the Qwen special token ids by
    :data:`~lvlm_lens.testing.tiny_families.QWEN_SPECIALS` name)."""
    tied = text.pop("tie_word_embeddings", False)
    text = {"model_type": "qwen3", "num_key_value_heads": 2, **text, "tie_word_embeddings": tied}
    text.setdefault("head_dim", text["hidden_size"] // text["num_attention_heads"])
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                  patch_size=OV15_PATCH, spatial_merge_size=OV15_MERGE,
                  out_hidden_size=text["hidden_size"])  # fmt: skip
    vision.update(vision_overrides)
    config = LlavaOnevision15Config(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
        tie_word_embeddings=tied,
    )
    return config, LlavaOnevision15ForConditionalGeneration


def llava_onevision1_5_image_processor(patch_size: int = OV15_PATCH, image_size: int = 0) -> Any:
    """Qwen2-VL's PIL image processor with one frame per patch: up to 64 merged tokens, or
    up to ``image_size**2`` pixels."""
    factor = patch_size * OV15_MERGE
    longest = image_size * image_size if image_size else 64 * factor * factor
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": factor * factor, "longest_edge": longest},
        patch_size=patch_size, merge_size=OV15_MERGE, temporal_patch_size=1,
    )  # fmt: skip
