"""Prompts for the synthetic set, and the word list of the toy model's tokenizer.

:data:`IMAGE_QUESTIONS` ask to identify the object from the image (raw LLaVA style); the parallel
:data:`TEXT_QUESTIONS` ask the same after a description of the object in words instead of the
image (:func:`text_prompt`). All their words are in :data:`VOCABULARY`.
"""

from __future__ import annotations

from collections.abc import Sequence

from lvlm_lens.data.synthetic import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    POSITIONS,
    SIZES,
    SyntheticExample,
)

#: (question, answer prefix) pairs shared by the image and the text prompts.
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("what is the main object in this image ? answer with one word .", ""),
    ("what is the main object ?", ""),
    ("which shape is shown in the picture ? answer with one word .", ""),
    ("what is this ?", " It is a"),
)
#: Object identification from the image (raw prompts, one ``<image>`` each).
IMAGE_QUESTIONS: tuple[str, ...] = tuple(
    f"USER: <image>\n{q} ASSISTANT:{prefix}" for q, prefix in QUESTIONS
)
#: The same questions after a description of the object in words (``{description}``), no image.
TEXT_QUESTIONS: tuple[str, ...] = tuple(
    f"USER: the picture shows {{description}} . {q} ASSISTANT:{prefix}" for q, prefix in QUESTIONS
)


def image_prompt(i: int = 0) -> str:
    """The ``i``-th object-identification prompt with an image (``IMAGE_QUESTIONS[i]``)."""
    return IMAGE_QUESTIONS[i]


def text_prompt(example: SyntheticExample | str, i: int = 0) -> str:
    """The ``i``-th question about an object described in words instead of shown.

    Args:
        example: A synthetic example (its ``description`` is used) or a description string.
        i: Which of :data:`TEXT_QUESTIONS` (parallel to :data:`IMAGE_QUESTIONS`).

    Returns:
        e.g. ``"USER: the picture shows a small red star . what is the main object in this
        image ? answer with one word . ASSISTANT:"``.
    """
    description = example if isinstance(example, str) else example.description
    return TEXT_QUESTIONS[i].format(description=description)


def _unique(words: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(words))


#: Every word the synthetic prompts, descriptions and answers use, plus a few more for
#: hand-written questions: the toy tokenizer's word list (after its special tokens).
VOCABULARY: tuple[str, ...] = _unique(
    [
        "\n", "USER", "ASSISTANT", ":", ".", ",", "?", "!", "'",
        "what", "which", "is", "are", "the", "a", "an", "main", "object", "in", "this", "image",
        "picture", "shows", "shown", "answer", "with", "one", "word", "shape", "It", "it",
        "there", "of", "on", "at", "and", "or", "name", "color", "colour", "size", "where",
        "background", "see", "can", "you", "do", "yes", "no",
        *CLASSES, *COLOURS, *SIZES, "outlined", "filled", "striped", "dotted", "plain",
        *BACKGROUNDS, *POSITIONS,
    ]
)  # fmt: skip
