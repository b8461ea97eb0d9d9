"""The tiny random SmolVLM2 checkpoint (``SmolVLMForConditionalGeneration``), built offline.

Shaped like ``HuggingFaceTB/SmolVLM2-256M-Video-Instruct``: a Llama decoder with grouped-query
attention, tied embeddings and ``rope_theta`` 100000, a SmolVLM vision tower, pixel shuffle by
4 and a linear projection, image splitting on (Idefics3's tiles:
:data:`~lvlm_lens.testing.tiny_idefics3.IDEFICS3_TILE`-px tiles of an image resized to a
longest side of three tiles, plus the global image), SmolVLM2's
``<|im_start|>User:<image>...<end_of_utterance>\\nAssistant:`` chat template. HF's
``SmolVLMProcessor`` needs ``num2words`` (for video prompts), so the folder holds the
tokenizer and the PIL image processor instead of a whole processor.
"""

from __future__ import annotations

from typing import Any

from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
from transformers.models.smolvlm import SmolVLMImageProcessorPil

from lvlm_lens.testing.tiny_idefics3 import (
    IDEFICS3_CHAT_TEMPLATE,
    IDEFICS3_LONGEST,
    IDEFICS3_PATCH,
    IDEFICS3_SCALE,
    IDEFICS3_SPECIALS,
    IDEFICS3_TILE,
    IDEFICS3_TILE_TOKENS,
    IDEFICS3_WORDS,
    idefics3_config,
)
from lvlm_lens.testing.tiny_save import tiny_builder

#: The tiny kind built here.
SMOLVLM_KIND = "smolvlm2"
#: SmolVLM2's template: Idefics3's, opened by ``<|im_start|>`` instead of the BOS token.
SMOLVLM_CHAT_TEMPLATE = IDEFICS3_CHAT_TEMPLATE.replace("{{ bos_token }}", "<|im_start|>", 1)
#: Image tokens per tile: 16x16 patches pixel-shuffled by 4.
SMOLVLM_SEQ_LEN = (IDEFICS3_TILE // IDEFICS3_PATCH // IDEFICS3_SCALE) ** 2


def smolvlm_tokenizer(chat_template: bool) -> Any:
    """The tiny word-level tokenizer with SmolVLM's special tokens (and chat template); like
    SmolVLM2's, it adds no special token and its BOS is ``<|im_start|>``."""
    from lvlm_lens.testing.tiny import TINY_WORDS, build_tiny_tokenizer
    from lvlm_lens.testing.tiny_families import EXTRA_WORDS

    return build_tiny_tokenizer(
        chat_template=SMOLVLM_CHAT_TEMPLATE if chat_template else None,
        words=TINY_WORDS + EXTRA_WORDS + IDEFICS3_WORDS,
        named_specials=IDEFICS3_SPECIALS,
        more_specials=IDEFICS3_TILE_TOKENS,
        bos_token=None,
    )


def smolvlm_image_processor() -> SmolVLMImageProcessorPil:
    """SmolVLM's PIL image processor with splitting on, at the tiny tile size."""
    return SmolVLMImageProcessorPil(
        size={"longest_edge": IDEFICS3_LONGEST}, max_image_size={"longest_edge": IDEFICS3_TILE},
        do_image_splitting=True, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip


def smolvlm_config(tokenizer: Any, text: dict[str, Any], vision: dict[str, Any]) -> SmolVLMConfig:
    """A tiny SmolVLM2 config: Idefics3's tiny config in SmolVLM's class (``text``: Llama text
    fields; ``vision`` may hold ``scale_factor``)."""
    from lvlm_lens.testing.tiny_families import tiny_text_kwargs

    tied = text.pop("tie_word_embeddings", True)
    config, _ = idefics3_config(
        tokenizer, tiny_text_kwargs(tokenizer, **text), vision, tied, config_cls=SmolVLMConfig
    )
    config._attn_implementation = "eager"
    return config


build_smolvlm_checkpoint = tiny_builder(
    "SmolVLM2", SmolVLMForConditionalGeneration,
    smolvlm_tokenizer, smolvlm_config, smolvlm_image_processor,
)
"""Builds and saves the tiny SmolVLM2 (see :func:`~.tiny.build_tiny_checkpoint`)."""
