"""A word-level tokenizer and the LLaVA-1.5 chat template, for small LVLMs built from scratch.

Tokenization: ``SPECIAL_TOKENS``, then the given words, then a family's own special tokens.
The pre-tokenizer keeps ``"\\n"`` as a token of its own, splits words (``\\w+``) from single
punctuation characters and drops all other whitespace, so ``"USER: <image>\\nwhat"`` becomes
``<s> USER : <image> \\n what``. Unknown words map to ``<unk>``; ``<s>`` is prepended by the
post-processor. Used by the shipped toy (:func:`lvlm_lens.toy.build_toy_tokenizer`) and the
tiny test checkpoints (:func:`lvlm_lens.testing.build_tiny_tokenizer`).
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

#: Special tokens, ids 0 onwards, the same for every vocabulary built here.
SPECIAL_TOKENS = (
    "<unk>",
    "<pad>",
    "<s>",
    "</s>",
    "<image>",
    "<video>",
    "<|im_start|>",
    "<|im_end|>",
)

#: LLaVA-1.5's chat template (``USER: <image>\\n... ASSISTANT:``) as Jinja.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set prefix = '' %}"
    "{% else %}{% set prefix = message['role'] | upper + ': ' %}{% endif %}"
    "{{ prefix }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] + ' ' }}"
    "{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def word_level_tokenizer(
    words: Sequence[str],
    *,
    chat_template: str | None = None,
    named_specials: dict[str, str] | None = None,
    more_specials: Sequence[str] = (),
    bos_token: str | None = "<s>",
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: :data:`SPECIAL_TOKENS`, ``words``, then a family's specials.

    Args:
        chat_template: Optional Jinja chat template to attach.
        words: The vocabulary after ``SPECIAL_TOKENS`` (ids ``len(SPECIAL_TOKENS)`` onwards, in
            this order); words are ``\\w+`` runs, single punctuation characters or ``"\\n"``.
        named_specials: A family's own special tokens by attribute name (``image_token``,
            ``boi_token``...), appended after ``words``; default ``{"image_token": "<image>"}``.
        more_specials: Further special tokens without an attribute name (Idefics3's
            ``<row_1_col_1>``...), appended after those.
        bos_token: The BOS token the post-processor prepends (default ``<s>``); ``None``: a
            tokenizer that adds no special token, its BOS ``<|im_start|>`` (SmolLM2's, so
            SmolVLM2's: its chat template writes that token itself).

    Returns:
        A fast tokenizer (supports ``return_offsets_mapping``) whose image token is one token.
    """
    words = tuple(words)
    named = dict(named_specials or {"image_token": "<image>"})
    extra = tuple(t for t in named.values() if t not in SPECIAL_TOKENS) + tuple(more_specials)
    specials = SPECIAL_TOKENS + extra
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words + extra)}
    if len(vocab) != len(specials) + len(words):
        raise ValueError("duplicate entries in the word-level vocabulary: pass each word once")
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\n|\w+|[^\w\s]"), behavior="removed", invert=True
    )
    if bos_token is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A $B:1",
            special_tokens=[(bos_token, vocab[bos_token])],
        )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token=bos_token or "<|im_start|>",
        eos_token="</s>",
        extra_special_tokens=named,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
