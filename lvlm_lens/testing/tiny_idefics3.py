"""The tiny random Idefics3 / SmolVLM checkpoint's parts: tokens, chat template, config, image
processor.

Shaped like ``HuggingFaceTB/SmolVLM-256M-Instruct``: a Llama decoder with grouped-query
attention and tied embeddings, a SigLIP-style tower, pixel shuffle by 4 and a linear projection,
image splitting on (an image is resized so its longest side is at most
:data:`IDEFICS3_LONGEST` px, cut into a grid of :data:`IDEFICS3_TILE`-px tiles, plus the whole
image at one tile's size), SmolVLM's ``User:<image>...<end_of_utterance>\\nAssistant:`` chat
template. :mod:`~lvlm_lens.testing.tiny_families` builds and saves it.
"""

from __future__ import annotations

from typing import Any

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.idefics3 import Idefics3ImageProcessorPil

#: Named special tokens of Idefics3's tokenizer (the HF processor's own strings).
IDEFICS3_SPECIALS = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
#: The tile markers ``<row_1_col_1>`` ... ``<row_6_col_6>``, special tokens of the real one.
IDEFICS3_TILE_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
#: Role words of the chat template (``message['role'] | capitalize``).
IDEFICS3_WORDS = ("User", "Assistant", "System")

#: SmolVLM's template: ``User:`` then the images and the text, ``<end_of_utterance>\n`` after
#: each turn, ``Assistant:`` to answer; it starts with the tokenizer's BOS.
IDEFICS3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

#: A 32-px tile of 16x16 patches, pixel-shuffled by 4 to 4x4 = 16 tokens; images are resized to
#: a longest side of 96 px, so up to 3x3 tiles + the global image (20x28 px: 3x3, 30x14: 3x2).
IDEFICS3_TILE, IDEFICS3_PATCH, IDEFICS3_SCALE, IDEFICS3_LONGEST = 32, 2, 4, 96


def idefics3_config(
    tokenizer: PreTrainedTokenizerFast, text: dict[str, Any], vision_overrides: dict, tied: bool,
    config_cls: type = Idefics3Config,
) -> tuple[Any, type]:
    """The config and class of a tiny Idefics3 (``text``: the Llama text config's fields;
    ``vision_overrides`` may hold ``scale_factor``); ``config_cls`` another config class of the
    same shape (SmolVLM2's)."""
    text = {"num_key_value_heads": 2, **text}  # GQA, as SmolVLM-256M's 9 heads : 3
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 100000.0})
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IDEFICS3_TILE, patch_size=IDEFICS3_PATCH,
    )  # fmt: skip
    vision.update(vision_overrides)
    scale = vision.pop("scale_factor", IDEFICS3_SCALE)
    config = config_cls(
        text_config={"model_type": "llama", **text, "tie_word_embeddings": tied},
        vision_config=vision,
        scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids(IDEFICS3_SPECIALS["image_token"]),
        tie_word_embeddings=tied,
        pad_token_id=tokenizer.pad_token_id,
    )
    return config, Idefics3ForConditionalGeneration


def idefics3_image_processor(tile: int = IDEFICS3_TILE, longest: int = 0) -> Any:
    """Idefics3's PIL image processor with splitting on: ``tile``-px tiles, images resized to a
    longest side of ``longest`` px (default three tiles)."""
    return Idefics3ImageProcessorPil(
        size={"longest_edge": longest or 3 * tile}, max_image_size={"longest_edge": tile},
        do_image_splitting=True, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip


def idefics3_processor(config: Idefics3Config, tokenizer: Any, image_processor: Any) -> Any:
    """HF's ``Idefics3Processor`` over these parts (its ``image_seq_len`` from the config)."""
    vc = config.vision_config
    seq = (vc.image_size // vc.patch_size // config.scale_factor) ** 2
    return Idefics3Processor(
        image_processor, tokenizer, image_seq_len=seq, chat_template=tokenizer.chat_template
    )
