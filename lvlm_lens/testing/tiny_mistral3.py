"""The tiny random Mistral 3 checkpoint (``Mistral3ForConditionalGeneration``), built offline.

Shaped like ``mistralai/Mistral-Small-3.1-24B-Instruct-2503``: a Pixtral tower (2-D rotary
positions over each image's own patch grid, no image tiling), a 2x2 patch merger, an untied
Mistral decoder with grouped-query attention, no sliding window and a ``head_dim`` that is not
``hidden_size / heads``; the ``[INST]`` / ``[SYSTEM_PROMPT]`` chat template. Images are resized
to a longest side of :data:`M3_LONGEST` px and rounded up to multiples of
:data:`M3_PATCH` ``* 2`` px, so one image token covers ``4x4`` px and images of different
sizes give different grids. HF's ``PixtralProcessor`` needs torchvision, so the folder holds
the tokenizer and the PIL image processor instead of a whole processor.
"""

from __future__ import annotations

from typing import Any

from transformers import Mistral3Config, Mistral3ForConditionalGeneration
from transformers.models.pixtral import PixtralImageProcessorPil

from lvlm_lens.testing.tiny_save import tiny_builder

#: The tiny kind built here.
MISTRAL3_KIND = "mistral3"
#: Pixtral patch side, longest image side (px) and patches merged per side.
M3_PATCH, M3_LONGEST, M3_MERGE = 2, 32, 2
#: Mistral's special tokens, by name where HF gives them one.
M3_SPECIALS = {"image_token": "[IMG]"}
M3_MORE = ("[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")
#: Mistral Small 3.1's template at its core: ``<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT]
#: [INST]...[/INST]``, an ``[IMG]`` per image in the user's content, in order.
M3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set items = [{'type': 'text', 'text': "
    "message['content']}] %}{% else %}{% set items = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]"
    "{% for item in items %}{{ item['text'] }}{% endfor %}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]"
    "{% for item in items %}{% if item['type'] == 'image' %}[IMG]"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}[/INST]"
    "{% else %}{% for item in items %}{{ item['text'] }}{% endfor %}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)


def mistral3_tokenizer(chat_template: bool) -> Any:
    """The tiny word-level tokenizer with Mistral 3's special tokens (and chat template)."""
    from lvlm_lens.testing.tiny import TINY_WORDS, build_tiny_tokenizer
    from lvlm_lens.testing.tiny_families import EXTRA_WORDS

    return build_tiny_tokenizer(
        chat_template=M3_CHAT_TEMPLATE if chat_template else None,
        words=TINY_WORDS + EXTRA_WORDS, named_specials=M3_SPECIALS, more_specials=M3_MORE,
    )  # fmt: skip


def mistral3_config(tokenizer: Any, text: dict[str, Any], vision: dict[str, Any]) -> Any:
    """A tiny Mistral 3 config (``text``: Mistral text fields; ``vision``: Pixtral fields, each
    over the tiny default)."""
    from lvlm_lens.testing.tiny_families import tiny_text_kwargs

    tied = text.pop("tie_word_embeddings", False)
    text = tiny_text_kwargs(tokenizer, **{
        "model_type": "mistral", "num_key_value_heads": 2, "head_dim": 24,
        "sliding_window": None, "tie_word_embeddings": tied,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, **text,
    })  # fmt: skip
    vision = {**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, image_size=M3_LONGEST, patch_size=M3_PATCH,
                     head_dim=16), **vision}  # fmt: skip
    config = Mistral3Config(
        text_config=text, vision_config={"model_type": "pixtral", **vision},
        image_token_index=tokenizer.convert_tokens_to_ids(M3_SPECIALS["image_token"]),
        spatial_merge_size=M3_MERGE, vision_feature_layer=-1, tie_word_embeddings=tied,
    )  # fmt: skip
    config._attn_implementation = "eager"
    return config


def mistral3_image_processor() -> PixtralImageProcessorPil:
    """Pixtral's PIL image processor at the tiny size (its ``patch_size`` the tower's, as in
    the real checkpoints: the processor multiplies it by the merge)."""
    return PixtralImageProcessorPil(
        size={"longest_edge": M3_LONGEST}, patch_size={"height": M3_PATCH, "width": M3_PATCH}
    )


build_mistral3_checkpoint = tiny_builder(
    "Mistral 3", Mistral3ForConditionalGeneration,
    mistral3_tokenizer, mistral3_config, mistral3_image_processor,
)
"""Builds and saves the tiny Mistral 3 (see :func:`~.tiny.build_tiny_checkpoint`)."""
