"""Tiny random checkpoints of the non-LLaVA families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3,
InternVL, Idefics3 / SmolVLM.

Each is a genuine transformers folder (config, safetensors, tokenizer with the family's
special tokens and chat template, the family's PIL image processor) shaped like the real
checkpoints at a tiny size: grouped-query attention, Qwen2's q/k/v biases and M-RoPE
(``mrope_section``), Qwen3-VL's q/k norms, interleaved M-RoPE and DeepStack, Gemma 3's
sandwich norms, q/k norms, tied embeddings and alternating sliding / global layers with
their own rope bases, InternVL's tiles (a grid by aspect ratio plus a thumbnail) and pixel
shuffle in front of a Qwen2, Idefics3's tiles with row/column markers in front of a Llama
(:mod:`~lvlm_lens.testing.tiny_idefics3`). The vocabulary is the shared tiny one
(:data:`~lvlm_lens.testing.tiny.TINY_WORDS` plus ``model``) with the family's special tokens
appended, so word ids are the same for every kind
(:mod:`~lvlm_lens.testing.tiny_family_tokenizers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.gemma3 import Gemma3ImageProcessorPil
from transformers.models.got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

from lvlm_lens.testing.tiny_family_tokenizers import (
    EXTRA_WORDS as EXTRA_WORDS,  # re-exported: the other tiny builders share the vocabulary
)
from lvlm_lens.testing.tiny_family_tokenizers import (
    GEMMA_SPECIALS,
    INTERNVL_SPECIALS,
    QWEN_SPECIALS,
    family_tokenizer,
)
from lvlm_lens.testing.tiny_idefics3 import (
    idefics3_config,
    idefics3_image_processor,
    idefics3_processor,
)
from lvlm_lens.testing.tiny_llava_onevision1_5 import (
    llava_onevision1_5_config,
    llava_onevision1_5_image_processor,
)
from lvlm_lens.testing.tiny_qwen3_5 import keep_word_level_tokenizer, qwen3_5_config
from lvlm_lens.testing.tiny_qwen3_vl_moe import qwen3_vl_moe_config, split_moe_fields

#: The tiny kinds built here (``build_tiny_checkpoint`` builds them as well as the LLaVA ones).
FAMILY_KINDS = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "gemma3", "internvl", "idefics3")
FAMILY_KINDS += ("qwen3-vl-moe",)
FAMILY_KINDS += ("llava-onevision-1.5",)
FAMILY_KINDS += ("qwen3.5", "qwen3.5-moe")

#: Qwen's vision patch side and merge: a ``H x W`` image gives ``(H/4) x (W/4)`` patches,
#: merged 2x2 into one token each (a 20x28 image: 35 tokens, 30x14: 32).
QWEN_PATCH, QWEN_MERGE = 2, 2
#: InternVL: 16-px tiles of 8x8 patches, pixel-shuffled to 4x4 = 16 tokens; up to 4 tiles.
INTERNVL_TILE, INTERNVL_MAX_TILES = 16, 4
#: Gemma 3: a 16-px SigLIP image of 8x8 patches, average-pooled to 4x4 = 16 tokens.
GEMMA_IMAGE_SIZE, GEMMA_PATCH, GEMMA_TOKENS = 16, 2, 16


def tiny_text_kwargs(tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> dict[str, Any]:
    """Text-config fields of every tiny checkpoint: 2 layers, 64 wide, 4 heads of 16, MLP 128,
    the tokenizer's vocabulary and special ids; ``overrides`` on top."""
    kwargs: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    kwargs.update(overrides)
    return kwargs


def _qwen(kind: str, tokenizer: PreTrainedTokenizerFast, overrides: dict, vision_overrides: dict):
    # tied as Qwen2-VL-2B and Qwen3-VL-2B/4B, untied as Qwen2.5-VL-7B
    tied = overrides.pop("tie_word_embeddings", kind != "qwen2.5-vl")
    text = tiny_text_kwargs(tokenizer, **{"num_key_value_heads": 2, **overrides})
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text.setdefault("rope_parameters", rope)  # (t, h, w) sections of d_head / 2 = 8
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in QWEN_SPECIALS.items()}
    common = dict(
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
        tie_word_embeddings=tied,
    )
    vision = dict(
        depth=2, num_heads=2, patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE,
        temporal_patch_size=2,
    )  # fmt: skip
    if kind == "qwen2-vl":
        vision.update(embed_dim=32, hidden_size=text["hidden_size"], mlp_ratio=2)
        vision.update(vision_overrides)
        config = Qwen2VLConfig(text_config=dict(text, tie_word_embeddings=tied),
                               vision_config=vision, **common)
        return config, Qwen2VLForConditionalGeneration
    if kind == "qwen3-vl":  # q/k norms, no biases; DeepStack from both vision layers
        text.setdefault("head_dim", text["hidden_size"] // text["num_attention_heads"])
        vision.update(
            hidden_size=32, intermediate_size=64, out_hidden_size=text["hidden_size"],
            num_position_embeddings=16, deepstack_visual_indexes=[0, 1],
        )  # fmt: skip
        vision.update(vision_overrides)
        config = Qwen3VLConfig(text_config=dict(text, tie_word_embeddings=tied),
                               vision_config=vision, **common)
        return config, Qwen3VLForConditionalGeneration
    vision.update(
        hidden_size=32, intermediate_size=64, out_hidden_size=text["hidden_size"],
        window_size=4 * QWEN_PATCH * QWEN_MERGE, fullatt_block_indexes=[1],
    )  # fmt: skip
    vision.update(vision_overrides)
    config = Qwen2_5_VLConfig(text_config=dict(text, tie_word_embeddings=tied),
                              vision_config=vision, **common)
    return config, Qwen2_5_VLForConditionalGeneration


def _gemma(tokenizer: PreTrainedTokenizerFast, overrides: dict, vision_overrides: dict):
    tied = overrides.pop("tie_word_embeddings", True)
    overrides.setdefault("num_hidden_layers", 3)
    text = tiny_text_kwargs(tokenizer, **{"num_key_value_heads": 2, **overrides})
    text.setdefault("head_dim", 16)
    text.setdefault("query_pre_attn_scalar", 16)
    text.setdefault("sliding_window", 12)
    n = text["num_hidden_layers"]  # local, local, global, ... (Gemma 3: 5 local : 1 global)
    text.setdefault(
        "layer_types",
        ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(n)],
    )
    text.setdefault(
        "rope_parameters",
        {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        },
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=GEMMA_IMAGE_SIZE, patch_size=GEMMA_PATCH, vision_use_head=False,
    )  # fmt: skip
    vision_overrides = dict(vision_overrides)
    tokens = vision_overrides.pop("mm_tokens_per_image", GEMMA_TOKENS)
    vision.update(vision_overrides)
    config = Gemma3Config(
        text_config=dict(text, tie_word_embeddings=tied),
        vision_config=vision,
        mm_tokens_per_image=tokens,
        boi_token_index=tokenizer.convert_tokens_to_ids(GEMMA_SPECIALS["boi_token"]),
        eoi_token_index=tokenizer.convert_tokens_to_ids(GEMMA_SPECIALS["eoi_token"]),
        image_token_index=tokenizer.convert_tokens_to_ids(GEMMA_SPECIALS["image_token"]),
        tie_word_embeddings=tied,
    )
    return config, Gemma3ForConditionalGeneration


def _internvl(tokenizer: PreTrainedTokenizerFast, overrides: dict, vision_overrides: dict):
    tied = overrides.pop("tie_word_embeddings", True)  # as InternVL3-1B / 2B
    text = tiny_text_kwargs(tokenizer, **{"num_key_value_heads": 2, **overrides})
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=INTERNVL_TILE, patch_size=2,
    )  # fmt: skip
    vision.update(vision_overrides)
    config = InternVLConfig(
        text_config={"model_type": "qwen2", **text, "tie_word_embeddings": tied},
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids(INTERNVL_SPECIALS["context_image_token"]),
        image_seq_length=(vision["image_size"] // vision["patch_size"] // 2) ** 2,
        tie_word_embeddings=tied,
    )
    return config, InternVLForConditionalGeneration


def family_config(
    kind: str,
    tokenizer: PreTrainedTokenizerFast,
    text_overrides: dict[str, Any] | None = None,
    vision_overrides: dict[str, Any] | None = None,
) -> tuple[Any, type]:
    """The HF config and model class of a ``kind`` model (tiny unless overridden).

    Args:
        kind: One of :data:`FAMILY_KINDS`.
        tokenizer: From :func:`family_tokenizer` (special token ids, vocabulary size).
        text_overrides: Text config fields (``hidden_size``, ``num_hidden_layers``...).
        vision_overrides: Vision config fields; for Gemma 3 also ``mm_tokens_per_image``, for
            Idefics3 also ``scale_factor``.
    """
    text, vision = dict(text_overrides or {}), dict(vision_overrides or {})
    if kind == "gemma3":
        config, cls = _gemma(tokenizer, text, vision)
    elif kind == "internvl":
        config, cls = _internvl(tokenizer, text, vision)
    elif kind == "idefics3":  # tied as SmolVLM-256M / 500M
        tied = text.pop("tie_word_embeddings", True)
        config, cls = idefics3_config(tokenizer, tiny_text_kwargs(tokenizer, **text), vision, tied)
    elif kind == "llava-onevision-1.5":
        ids = {name: tokenizer.convert_tokens_to_ids(t) for name, t in QWEN_SPECIALS.items()}
        config, cls = llava_onevision1_5_config(tiny_text_kwargs(tokenizer, **text), ids, vision)
    elif kind in ("qwen3.5", "qwen3.5-moe"):  # untied, as Qwen3.5-27B / 35B-A3B
        ids = {name: tokenizer.convert_tokens_to_ids(t) for name, t in QWEN_SPECIALS.items()}
        tied = text.pop("tie_word_embeddings", False)
        text.setdefault("num_hidden_layers", 4)
        vision = {**dict(patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE), **vision}
        config, cls = qwen3_5_config(tiny_text_kwargs(tokenizer, **text), vision, ids, tied,
                                     moe=kind == "qwen3.5-moe")
    elif kind == "qwen3-vl-moe":  # untied, as Qwen3-VL-30B-A3B
        moe = split_moe_fields(text)
        text.setdefault("tie_word_embeddings", False)
        config, cls = qwen3_vl_moe_config(_qwen("qwen3-vl", tokenizer, text, vision)[0], moe)
    else:
        config, cls = _qwen(kind, tokenizer, text, vision)
    config._attn_implementation = "eager"
    return config, cls


def family_image_processor(kind: str, patch_size: int = QWEN_PATCH, image_size: int = 0) -> Any:
    """The family's PIL image processor: Qwen's native resolution (up to 64 merged tokens per
    image by default), Gemma 3's fixed ``image_size`` square (default the tiny one),
    InternVL's or Idefics3's tiles of ``image_size``."""
    if kind == "idefics3":
        return idefics3_image_processor(image_size) if image_size else idefics3_image_processor()
    if kind == "llava-onevision-1.5":
        return llava_onevision1_5_image_processor(patch_size, image_size)
    if kind == "internvl":
        side = image_size or INTERNVL_TILE
        return GotOcr2ImageProcessorPil(
            size={"height": side, "width": side}, crop_to_patches=True, min_patches=1,
            max_patches=INTERNVL_MAX_TILES,
        )  # fmt: skip
    if kind == "gemma3":
        side = image_size or GEMMA_IMAGE_SIZE
        return Gemma3ImageProcessorPil(
            size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    factor = patch_size * QWEN_MERGE
    longest = image_size * image_size if image_size else 64 * factor * factor
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": factor * factor, "longest_edge": longest},
        patch_size=patch_size,
        merge_size=QWEN_MERGE,
        temporal_patch_size=2,
    )


def build_family_checkpoint(
    kind: str,
    folder: Path,
    *,
    seed: int,
    chat_template: bool,
    vision: dict[str, Any] | None = None,
    lvlm: dict[str, Any] | None = None,
    processor: dict[str, Any] | None = None,
    **text_overrides: Any,
) -> Path:
    """Builds and saves a tiny ``kind`` checkpoint (see :func:`~.tiny.build_tiny_checkpoint`)."""
    from lvlm_lens.testing.tiny import _randomize_

    tokenizer = family_tokenizer(kind, chat_template)
    config, model_cls = family_config(kind, tokenizer, text_overrides, vision)
    for key, value in (lvlm or {}).items():
        setattr(config, key, value)
    image_processor = family_image_processor(kind)
    for key, value in (processor or {}).items():
        setattr(image_processor, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        _randomize_(model)
        if kind == "gemma3":
            with torch.no_grad():  # 1 + w norms: move w off 0; the projector starts at zero
                for name, param in model.named_parameters():
                    if "norm" in name and name.endswith("weight") and "vision_tower" not in name:
                        param.normal_(0.0, 0.2)
                proj = model.model.multi_modal_projector.mm_input_projection_weight
                proj.normal_(0.0, 0.2)
    model.eval()
    model.save_pretrained(folder)
    if kind == "idefics3":  # its HF processor needs no torchvision: save it whole
        idefics3_processor(config, tokenizer, image_processor).save_pretrained(folder)
        return folder
    tokenizer.save_pretrained(folder)
    if kind in ("qwen3.5", "qwen3.5-moe"):
        keep_word_level_tokenizer(folder)
    image_processor.save_pretrained(folder)
    return folder
