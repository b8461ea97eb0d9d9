"""Multi-attribute questions about the synthetic set: shape, colour, size or background.

The same image can be asked for any of four attributes, each answered with one word
(:data:`ATTRIBUTE_ANSWERS`), so the answer depends on the question as well as on the image: the
question has to reach the final token before the image information can be used. Every question
comes with the image (:func:`attribute_image_prompt`) or with the image described in words
(:func:`attribute_text_prompt`, e.g. ``USER: the picture shows a small red star on a gray
background . what is the colour of the object ? answer with one word . ASSISTANT:``).

Template 0 of every attribute is the same sentence up to one word (``what is the {attribute} of
the object ? ...``), so prompts of different attributes differ in exactly one token. The science
toy (:mod:`lvlm_lens.toy`) is trained on these; the bundled toy's prompts
(:mod:`~lvlm_lens.data.prompts`) are left as they are. All words are in
:data:`~lvlm_lens.data.VOCABULARY`.
"""

from __future__ import annotations

from collections.abc import Sequence

from lvlm_lens.data.records import Record
from lvlm_lens.data.synthetic import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    SIZES,
    SyntheticExample,
    generate_dataset,
)

#: The attributes a question can ask for (``"shape"`` is the class).
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "background")

#: The one-word answers of each attribute.
ATTRIBUTE_ANSWERS: dict[str, tuple[str, ...]] = {
    "shape": CLASSES,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "background": BACKGROUNDS,
}

#: Question templates per attribute; template 0 is one sentence with the attribute word swapped.
ATTRIBUTE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "shape": (
        "what is the shape of the object ? answer with one word .",
        "which shape is shown in the picture ?",
    ),
    "colour": (
        "what is the colour of the object ? answer with one word .",
        "what color is the main object ?",
    ),
    "size": (
        "what is the size of the object ? answer with one word .",
        "is the object small or large ?",
    ),
    "background": (
        "what is the background of the object ? answer with one word .",
        "which background is shown in the picture ?",
    ),
}


def _check(attribute: str, template: int) -> str:
    if attribute not in ATTRIBUTE_QUESTIONS:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")
    questions = ATTRIBUTE_QUESTIONS[attribute]
    if not 0 <= template < len(questions):
        raise ValueError(
            f"template {template} out of range for {attribute!r} (0..{len(questions) - 1})"
        )
    return questions[template]


def attribute_answer(example: SyntheticExample, attribute: str) -> str:
    """The one-word answer of ``example`` for ``attribute`` (the class for ``"shape"``)."""
    _check(attribute, 0)
    if attribute == "shape":
        return example.label
    return example.appearance[attribute]


def scene_description(example: SyntheticExample) -> str:
    """The object and its background in words: ``a small red star on a gray background``."""
    return f"{example.description} on a {example.appearance['background']} background"


def attribute_image_prompt(attribute: str, template: int = 0) -> str:
    """A raw LLaVA prompt asking for ``attribute`` of the image (one ``<image>``)."""
    return f"USER: <image>\n{_check(attribute, template)} ASSISTANT:"


def attribute_text_prompt(
    example: SyntheticExample | str, attribute: str, template: int = 0
) -> str:
    """The same question about a scene described in words (no image).

    Args:
        example: A synthetic example (described by :func:`scene_description`) or the words.
        attribute: One of :data:`ATTRIBUTES`.
        template: Which of ``ATTRIBUTE_QUESTIONS[attribute]``.
    """
    words = example if isinstance(example, str) else scene_description(example)
    return f"USER: the picture shows {words} . {_check(attribute, template)} ASSISTANT:"


def attribute_records(
    n: int,
    seed: int,
    attributes: Sequence[str] = ATTRIBUTES,
    template: int = 0,
    image_size: int = 48,
) -> list[Record]:
    """The synthetic set as :class:`Record` s, example ``i`` asked for ``attributes[i % len]``.

    ``meta`` holds ``attribute`` (the one asked), ``label`` (the class), ``appearance``,
    ``description`` (:func:`scene_description`) and ``template``.
    """
    attributes = tuple(attributes)
    if not attributes:
        raise ValueError("attributes is empty")
    for a in attributes:
        _check(a, template)
    out = []
    for i, ex in enumerate(generate_dataset(n, seed, image_size)):
        attribute = attributes[i % len(attributes)]
        out.append(
            Record(
                image=ex.image,
                prompt=attribute_image_prompt(attribute, template),
                answer=attribute_answer(ex, attribute),
                mask=ex.mask,
                id=f"attribute-{seed}-{i}-{attribute}",
                meta={
                    "attribute": attribute,
                    "label": ex.label,
                    "appearance": ex.appearance,
                    "description": scene_description(ex),
                    "template": template,
                },
            )
        )
    return out
