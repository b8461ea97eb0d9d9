"""The toy LVLM: a small, really trained ``LlavaForConditionalGeneration`` shipped with the package.

It names the main object of a 48-px synthetic image (:mod:`lvlm_lens.data`) in one word, and
the same object when it is described in words instead of shown. It is a genuine HF LLaVA
checkpoint (CLIP vision tower, 2-layer GELU projector, Llama decoder, word-level tokenizer,
CLIP image processor), so it loads through the same path as LLaVA-1.5 and lets the whole
toolkit run for real on a CPU. See ``docs/toy_model.md``; train a new one with
:func:`lvlm_lens.toy.train.train_toy` or ``python -m lvlm_lens.toy.train --out DIR``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    LlavaConfig,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip import CLIPImageProcessorPil

from lvlm_lens.data import IMAGE_QUESTIONS, VOCABULARY, generate_dataset, image_prompt, text_prompt
from lvlm_lens.data.questions import (
    ATTRIBUTE_QUESTIONS,
    ATTRIBUTES,
    attribute_answer,
    attribute_image_prompt,
    attribute_text_prompt,
)
from lvlm_lens.hf_parts import clip_llama_config, word_level_tokenizer
from lvlm_lens.toy.templates import apply_template, chat_template, template_of

if TYPE_CHECKING:  # loaded lazily by load_toy
    from lvlm_lens.model.hooked_lvlm import HookedLVLM

#: Image side of the toy in pixels.
TOY_IMAGE_SIZE = 48
#: Vision patch size in pixels.
TOY_PATCH_SIZE = 8
#: Patches per image side: a 6x6 grid of 36 image tokens.
TOY_GRID = TOY_IMAGE_SIZE // TOY_PATCH_SIZE


def build_toy_tokenizer(template: str = "llava") -> PreTrainedTokenizerFast:
    """The toy's word-level tokenizer: special tokens + :data:`lvlm_lens.data.VOCABULARY`.

    Args:
        template: Its chat template (:mod:`lvlm_lens.toy.templates`): ``"llava"`` (the
            bundled and science toys) or ``"roles"`` (the science toy v2).
    """
    return word_level_tokenizer(VOCABULARY, chat_template=chat_template(template))


def build_toy_image_processor() -> CLIPImageProcessorPil:
    """CLIP preprocessing at 48 px (resize shortest edge, center crop, CLIP mean / std)."""
    square = {"height": TOY_IMAGE_SIZE, "width": TOY_IMAGE_SIZE}
    return CLIPImageProcessorPil(
        size={"shortest_edge": TOY_IMAGE_SIZE}, crop_size=square, do_center_crop=True
    )


def build_toy_processor(template: str = "llava") -> LlavaProcessor:
    """The toy's ``LlavaProcessor`` (tokenizer, image processor, chat template).

    Args:
        template: The chat template (:func:`build_toy_tokenizer`).
    """
    return LlavaProcessor(
        image_processor=build_toy_image_processor(),
        tokenizer=build_toy_tokenizer(template),
        patch_size=TOY_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template(template),
    )


def toy_config(tokenizer: Any | None = None, **text_overrides: Any) -> LlavaConfig:
    """The toy architecture.

    Vision: CLIP, 48-px images, 8-px patches (36 image tokens + CLS, CLS dropped by the
    ``"default"`` feature strategy), 3 layers, width 96, 4 heads; features of the last layer
    (``vision_feature_layer=-1``: with only three layers the penultimate one would leave the
    last layer untrained). Projector: 96 -> 128 -> 128 with GELU. Language: Llama, 4 layers,
    d_model 128, 8 heads of 16 (no grouped-query attention), MLP 256, untied unembedding.
    """
    text = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
    )
    return clip_llama_config(
        tokenizer or build_toy_tokenizer(),
        image_size=TOY_IMAGE_SIZE,
        patch_size=TOY_PATCH_SIZE,
        vision_d_model=96,
        vision_d_mlp=192,
        vision_layers=3,
        vision_heads=4,
        vision_feature_layer=-1,
        **(text | text_overrides),
    )


#: The shipped checkpoints: name -> folder inside the package (``None`` = ``"bundled"``).
TOY_CHECKPOINTS: dict[str, str] = {"bundled": "checkpoint", "science": "science_checkpoint"}


def toy_checkpoint_path(name: str | None = None) -> Path:
    """The folder of a shipped toy checkpoint (inside the installed package).

    Args:
        name: ``None`` or ``"bundled"``: the 4-layer shape toy; ``"science"``: the 8-layer
            multi-attribute toy (``docs/toy_model.md``).
    """
    key = "bundled" if name is None else name
    if key not in TOY_CHECKPOINTS:
        raise ValueError(f"unknown toy {name!r}; expected one of {tuple(TOY_CHECKPOINTS)}")
    return Path(str(files("lvlm_lens.toy").joinpath(TOY_CHECKPOINTS[key])))


def load_toy(
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    name: str | None = None,
) -> HookedLVLM:
    """A shipped toy checkpoint as a :class:`~lvlm_lens.HookedLVLM`.

    Args:
        device: Where to put it (default: CUDA if available, else CPU).
        dtype: ``float32`` (default), ``bfloat16`` or ``float16`` (not on CPU).
        name: Which toy (:func:`toy_checkpoint_path`): the bundled one by default.
    """
    from lvlm_lens.model.hooked_lvlm import HookedLVLM

    path = toy_checkpoint_path(name)
    if not (path / "config.json").is_file():
        preset = "bundled" if name is None else name
        raise FileNotFoundError(
            f"no toy checkpoint at {path}: train one with `python -m lvlm_lens.toy.train "
            f"--preset {preset} --out {path}` (or lvlm_lens.toy.train.train_toy)"
        )
    return HookedLVLM.from_pretrained(path, device=device, dtype=dtype)


@torch.no_grad()
def evaluate_toy(
    model: HookedLVLM,
    n: int = 500,
    seed: int = 12345,
    *,
    batch_size: int = 100,
    prompt_indices: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Held-out accuracy of a toy model on a fresh synthetic set.

    Every example is asked once with its image (:func:`~lvlm_lens.data.image_prompt`) and once
    with its description in words (:func:`~lvlm_lens.data.text_prompt`); the prompt index
    cycles through ``prompt_indices`` (default: all). An answer is correct when the argmax of
    the logits at the final position is the class token.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        n: Number of examples.
        seed: Seed of :func:`~lvlm_lens.data.generate_dataset` (keep it apart from training).
        batch_size: Examples per forward pass.
        prompt_indices: Which prompt templates to use.

    Returns:
        ``image_acc``, ``text_acc`` (fractions), ``n`` and ``seed``.
    """
    indices = tuple(range(len(IMAGE_QUESTIONS))) if prompt_indices is None else prompt_indices
    examples = generate_dataset(n, seed, image_size=TOY_IMAGE_SIZE)
    hits = {"image": 0, "text": 0}
    for start in range(0, n, batch_size):
        chunk = examples[start : start + batch_size]
        which = [indices[(start + k) % len(indices)] for k in range(len(chunk))]
        answers = [ex.label for ex in chunk]
        batches = {
            "image": model.prepare(
                [ex.image for ex in chunk], [image_prompt(i) for i in which], answers
            ),
            "text": model.prepare(
                None, [text_prompt(ex, i) for ex, i in zip(chunk, which, strict=True)], answers
            ),
        }
        for kind, inp in batches.items():
            pred = model(inp)[:, -1].argmax(-1)
            hits[kind] += int((pred == inp.answer_ids.to(pred.device)).sum())
    return {"image_acc": hits["image"] / n, "text_acc": hits["text"] / n, "n": n, "seed": seed}


@torch.no_grad()
def evaluate_attributes(
    model: HookedLVLM,
    n: int = 500,
    seed: int = 12345,
    *,
    batch_size: int = 100,
    attributes: tuple[str, ...] = ATTRIBUTES,
    template: str | None = None,
) -> dict[str, Any]:
    """Held-out accuracy of a toy model per question type (attribute x image / text).

    Every example is asked for every attribute (:mod:`lvlm_lens.data.questions`), once with
    its image and once with the scene described in words; the question template cycles over
    the examples. An answer is correct when the argmax at the final position is the answer.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM` (e.g. ``load_toy(name="science")``).
        n: Number of examples (each asked ``2 * len(attributes)`` times).
        seed: Seed of :func:`~lvlm_lens.data.generate_dataset` (keep it apart from training).
        batch_size: Examples per forward pass.
        attributes: Which attributes to ask.
        template: The prompt template the toy was trained with (:mod:`lvlm_lens.toy.templates`;
            ``"roles"`` for the science toy v2); ``None``: the one of the model's chat template.

    Returns:
        ``acc``: ``{"image:shape": ..., "text:colour": ...}``; ``image_acc`` / ``text_acc``
        (the lowest over the attributes), ``n`` and ``seed``.
    """
    template = template or template_of(getattr(model, "chat_template", None))
    examples = generate_dataset(n, seed, image_size=TOY_IMAGE_SIZE)
    hits = {f"{k}:{a}": 0 for k in ("image", "text") for a in attributes}
    for start in range(0, n, batch_size):
        chunk = examples[start : start + batch_size]
        for a in attributes:
            count = len(ATTRIBUTE_QUESTIONS[a])
            which = [(start + k) % count for k in range(len(chunk))]
            answers = [attribute_answer(ex, a) for ex in chunk]
            images = [ex.image for ex in chunk]
            texts = [apply_template(attribute_text_prompt(ex, a, t), template)
                     for ex, t in zip(chunk, which, strict=True)]  # fmt: skip
            prompts = [apply_template(attribute_image_prompt(a, t), template) for t in which]
            batches = {
                "image": model.prepare(images, prompts, answers),
                "text": model.prepare(None, texts, answers),
            }
            for kind, inp in batches.items():
                pred = model(inp)[:, -1].argmax(-1)
                hits[f"{kind}:{a}"] += int((pred == inp.answer_ids.to(pred.device)).sum())
    acc = {k: v / n for k, v in hits.items()}
    return {
        "acc": acc,
        "image_acc": min(v for k, v in acc.items() if k.startswith("image:")),
        "text_acc": min(v for k, v in acc.items() if k.startswith("text:")),
        "n": n,
        "seed": seed,
    }
