"""The tiny random Qwen3.5 checkpoint's config.

Shaped like ``Qwen/Qwen3.5-27B`` at a tiny size: Gated-DeltaNet linear-attention layers with
full-attention layers between them (:data:`LAYER_TYPES`), grouped key heads in the linear
layers (two value heads per key head, as the real 16 : 32), output-gated full attention with
grouped-query heads, q/k norms, ``1 + w`` norms, partial interleaved M-RoPE and Qwen3-VL's
vision side without DeepStack. :mod:`~lvlm_lens.testing.tiny_families` builds and saves it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import (
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
)

#: Linear-attention layers, each followed by a full-attention one (the real: 3 linear : 1 full).
LAYER_TYPES = ["linear_attention", "full_attention"] * 2
#: Linear-attention heads: key heads, value heads, their widths and the causal conv's kernel.
LINEAR = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
              linear_value_head_dim=8, linear_conv_kernel_dim=4)  # fmt: skip


#: The MoE variant (Qwen3.5-35B-A3B: 256 experts of 512, top 8, a shared expert of 512).
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
           shared_expert_intermediate_size=48)  # fmt: skip


def qwen3_5_config(
    text: dict[str, Any], vision: dict[str, Any], ids: dict[str, int], tied: bool,
    moe: bool = False,
) -> tuple[Any, type]:
    """The tiny Qwen3.5 config from the shared tiny text fields ``text`` (overrides included),
    Qwen vision fields ``vision`` and the Qwen special token ids ``ids``; with ``moe`` the
    Qwen3.5-MoE one (:data:`MOE`, a sparse MLP in every layer)."""
    if moe:
        text.pop("intermediate_size", None)
        for key, value in MOE.items():
            text.setdefault(key, value)
    n = text.setdefault("num_hidden_layers", len(LAYER_TYPES))
    text.setdefault("layer_types", [LAYER_TYPES[i % 2] for i in range(n)])
    text.setdefault("num_key_value_heads", 2)
    text.setdefault("head_dim", 16)
    for key, value in LINEAR.items():
        text.setdefault(key, value)
    # partial rotary over half of d_head: 4 frequencies, split (t, h, w) = (2, 1, 1)
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0,
                                        "mrope_section": [2, 1, 1], "mrope_interleaved": True,
                                        "partial_rotary_factor": 0.5})  # fmt: skip
    vision = {**dict(depth=2, num_heads=2, hidden_size=32, intermediate_size=64,
                     out_hidden_size=text["hidden_size"], num_position_embeddings=16,
                     temporal_patch_size=2), **vision}  # fmt: skip
    config_cls = Qwen3_5MoeConfig if moe else Qwen3_5Config
    config = config_cls(
        text_config=dict(text, tie_word_embeddings=tied),
        vision_config=vision,
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
        tie_word_embeddings=tied,
    )
    return config, Qwen3_5MoeForConditionalGeneration if moe else Qwen3_5ForConditionalGeneration


def keep_word_level_tokenizer(folder: Path) -> None:
    """Make ``AutoTokenizer`` load the saved tiny word-level tokenizer as it is.

    For ``model_type`` ``qwen3_5`` transformers replaces the saved tokenizer class by its
    byte-level BPE ``Qwen3_5Tokenizer``, which rebuilt from a word-level vocabulary without
    merges drops every word longer than one character. It skips that replacement for a folder
    whose ``tokenizer_config.json`` has an ``auto_map``, and ignores that map unless
    ``trust_remote_code`` is given; the one written here names no real module, so the folder's
    own ``TokenizersBackend`` is loaded (with ``trust_remote_code=True`` loading fails)."""
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoTokenizer": [None, "tiny_word_level.TinyWordLevel"]}
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
