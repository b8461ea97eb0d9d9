"""The tiny tokenizers of the non-LLaVA families of :mod:`~lvlm_lens.testing.tiny_families`
(Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, InternVL, Idefics3, Qwen3-VL-MoE,
LLaVA-OneVision-1.5, Qwen3.5): the shared tiny word-level vocabulary
(:data:`~lvlm_lens.testing.tiny.TINY_WORDS` plus :data:`EXTRA_WORDS`) with each family's
special tokens appended, and its chat template shortened to its core.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from lvlm_lens.testing.tiny_idefics3 import (
    IDEFICS3_CHAT_TEMPLATE,
    IDEFICS3_SPECIALS,
    IDEFICS3_TILE_TOKENS,
    IDEFICS3_WORDS,
)

#: Words the family chat templates need beyond the shared tiny vocabulary.
EXTRA_WORDS = ("model",)

QWEN_SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
INTERNVL_SPECIALS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
GEMMA_SPECIALS = {
    "boi_token": "<start_of_image>",
    "image_token": "<image_soft_token>",
    "eoi_token": "<end_of_image>",
    "start_of_turn": "<start_of_turn>",
    "end_of_turn": "<end_of_turn>",
}

#: Qwen2-VL / Qwen2.5-VL's template, shortened: a default system turn, images as
#: ``<|vision_start|><|image_pad|><|vision_end|>`` where the message puts them.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: InternVL3's template, shortened (no default system turn): ChatML, an image as
#: ``<IMG_CONTEXT>\n`` (the processor expands it to ``<img><IMG_CONTEXT>...</img>``).
INTERNVL_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}",
    "",
).replace("'<|vision_start|><|image_pad|><|vision_end|>'", "'<IMG_CONTEXT>\n'")

#: Qwen3-VL's template, shortened: as Qwen2-VL's without the default system turn.
QWEN3_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}",
    "",
)

#: Gemma 3's template, shortened: the system message joins the first user turn, the
#: assistant is ``model``, an image is ``<start_of_image>`` (the processor expands it).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def family_tokenizer(kind: str, chat_template: bool) -> PreTrainedTokenizerFast:
    """The tiny word-level tokenizer with ``kind``'s special tokens (and chat template)."""
    from lvlm_lens.testing.tiny import TINY_WORDS, build_tiny_tokenizer

    templates = {
        "gemma3": GEMMA_CHAT_TEMPLATE,
        "qwen3-vl": QWEN3_CHAT_TEMPLATE,
        "qwen3-vl-moe": QWEN3_CHAT_TEMPLATE,
        "qwen3.5": QWEN3_CHAT_TEMPLATE,
        "qwen3.5-moe": QWEN3_CHAT_TEMPLATE,
        "llava-onevision-1.5": QWEN_CHAT_TEMPLATE,
        "internvl": INTERNVL_CHAT_TEMPLATE,
        "idefics3": IDEFICS3_CHAT_TEMPLATE,
    }
    specials = {"gemma3": GEMMA_SPECIALS, "internvl": INTERNVL_SPECIALS,
                "idefics3": IDEFICS3_SPECIALS}.get(kind, QWEN_SPECIALS)  # fmt: skip
    template = templates.get(kind, QWEN_CHAT_TEMPLATE) if chat_template else None
    idefics = kind == "idefics3"
    return build_tiny_tokenizer(
        chat_template=template,
        words=TINY_WORDS + EXTRA_WORDS + (IDEFICS3_WORDS if idefics else ()),
        named_specials=specials,
        more_specials=IDEFICS3_TILE_TOKENS if idefics else (),
    )
