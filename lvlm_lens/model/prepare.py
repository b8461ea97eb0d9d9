"""Images + prompts -> one left-padded :class:`LVLMInput` with named token groups."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from lvlm_lens.data.images import to_8bit
from lvlm_lens.model.families import GENERIC_PLACEHOLDER, ImageText
from lvlm_lens.model.inputs import GROUP_NAMES, LVLMInput
from lvlm_lens.model.tokens import check_known

#: Images whose shorter side is below this many pixels are upscaled (nearest neighbour) before
#: processing, with a warning: the image processors cannot handle them as they are, and what the
#: model sees of such an image is a few blocks of colour.
MIN_IMAGE_SIDE = 16
#: Chat-template scaffolding recognised in raw prompts (the ``role`` token group).
ROLE_PATTERN = re.compile(
    r"(?:USER|ASSISTANT|SYSTEM|User|Assistant|System|Human|HUMAN|GPT)\s*:"
    r"|\[/?INST\]|<\|im_start\|>\s*(?:system|user|assistant)|<\|im_end\|>"
    r"|<start_of_turn>(?:user|model)|<end_of_turn>|<\|(?:user|assistant|system|end)\|>|###"
    r"|<end_of_utterance>"
)
_USER = re.compile(r"user|human|\[INST\]", re.IGNORECASE)


def to_rgb(image: Any) -> Image.Image:
    """Load / convert one image to RGB.

    Accepts a PIL image, an ``HxW`` or ``HxWxC`` uint8 array, or a path. Transparency is
    composited onto white; grayscale and palette images are converted.
    """
    if isinstance(image, str | Path):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, a uint8 array or a path, got {type(image)}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    image = to_8bit(image)  # 16-bit / float: rescaled, not clipped to white
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    return image.convert("RGB")


def upscale_tiny(images: list[Image.Image], stacklevel: int = 4) -> list[Image.Image]:
    """Upscale (nearest neighbour, by an integer factor) the images whose shorter side is below
    :data:`MIN_IMAGE_SIDE`, with one warning for the lot."""
    tiny = [im for im in images if min(im.size) < MIN_IMAGE_SIDE]
    if not tiny:
        return images
    small = min(tiny, key=lambda im: min(im.size))
    warnings.warn(
        f"{len(tiny)} image(s) have a side below MIN_IMAGE_SIDE={MIN_IMAGE_SIDE} px (smallest "
        f"{small.width}x{small.height}): upscaled by nearest neighbour, they carry almost no "
        "visual content and the model's answers on them mean little",
        UserWarning,
        stacklevel=stacklevel,
    )
    out = []
    for im in images:
        f = -(-MIN_IMAGE_SIDE // min(im.size))
        out.append(im if f == 1 else im.resize((im.width * f, im.height * f), Image.NEAREST))
    return out


def _images_per_example(images: Any, n: int) -> list[list[Any]]:
    if images is None:
        return [[] for _ in range(n)]
    if not isinstance(images, list | tuple):
        images = [images]
    if len(images) != n:
        raise ValueError(
            f"got {len(images)} image entries for {n} prompts: give one entry per "
            "prompt (an image, a list of images, or None)"
        )
    return [
        [] if im is None else list(im) if isinstance(im, list | tuple) else [im] for im in images
    ]


def _spans_from_roles(
    text: str, placeholder: str, closers: tuple[str, ...] = ()
) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """Infer (system, question) character spans of a raw prompt from its role markers; the
    question starts after the last image placeholder and any of its ``closers``."""
    roles = list(ROLE_PATTERN.finditer(text))
    users = [m for m in roles if _USER.search(m.group())]
    system, start, end = None, 0, len(text)
    if roles:
        first = roles[0].start()
        system = _strip_span(text, 0, first) if text[:first].strip() else None
        start = users[-1].end() if users else roles[0].end()
        # the user's turn ends at the next marker (ASSISTANT:, [/INST], <|im_end|>, ...)
        after = [m for m in roles if m.start() >= start]
        end = after[0].start() if after else len(text)
    last_image = text.rfind(placeholder, start, end)
    if last_image >= 0:
        start = last_image + len(placeholder)
        closer = next((c for c in closers if text.startswith(c, start)), None)
        start += len(closer) if closer else 0
    return system, _strip_span(text, start, end)


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink a character span so it neither starts nor ends with whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _text_group(
    j: int,
    n_tokens: int,
    is_bos: bool,
    a: int,
    b: int,
    q_span: tuple[int, int],
    sys_span: tuple[int, int] | None,
) -> str:
    """The one group of text token ``j`` (of ``n_tokens``) at characters ``[a, b)``.

    The last token is ``final`` and nothing else; then ``bos``, ``question``, ``system``, and
    ``role`` for the rest (chat-template scaffolding).
    """
    if j == n_tokens - 1:
        return "final"
    if j == 0 and is_bos:
        return "bos"
    if _overlaps(q_span, a, b):
        return "question"
    if _overlaps(sys_span, a, b):
        return "system"
    return "role"


def _render(
    model: Any, question: str, n_images: int, system: str | None, it: ImageText
) -> tuple[str, tuple[int, int] | None, tuple[int, int]]:
    """Wrap a bare question in the chat template (or ``USER: ... ASSISTANT:``)."""
    for placeholder in {it.placeholder, GENERIC_PLACEHOLDER}:
        if placeholder in question:
            raise ValueError(
                f"template='chat' takes a bare question, but this one holds {placeholder!r}"
                ": use template='raw' for a complete prompt"
            )
    if model.chat_template:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if system:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        text = model.tokenizer.apply_chat_template(
            messages, chat_template=model.chat_template, tokenize=False, add_generation_prompt=True
        )
    else:
        text = (f"{system} " if system else "") + "USER: " + f"{it.alias}\n" * n_images
        text += f"{question} ASSISTANT:"
    q = text.rfind(question)
    s = text.find(system) if system else -1
    return text, (s, s + len(system)) if s >= 0 else None, (q, q + len(question))


def _expand(
    text: str, placeholder: str, expansions: list[str], spans: tuple[tuple[int, int] | None, ...]
) -> tuple[str, tuple[tuple[int, int] | None, ...]]:
    """Replace the image placeholders, in order, by their expansions (the image token once per
    run of image tokens: Gemma 3's ``\\n\\n<start_of_image><image_soft_token><end_of_image>
    \\n\\n``, Idefics3's tile markers), shifting the character spans that follow."""
    pieces = text.split(placeholder)
    starts = [m.start() for m in re.finditer(re.escape(placeholder), text)]
    deltas = [len(e) - len(placeholder) for e in expansions]
    shift = lambda o: o + sum(d for st, d in zip(starts, deltas, strict=True) if st < o)  # noqa: E731
    moved = tuple(None if sp is None else (shift(sp[0]), shift(sp[1])) for sp in spans)
    out = pieces[0] + "".join(e + p for e, p in zip(expansions, pieces[1:], strict=True))
    return out, moved


def _bos_in_text(
    text: str, placeholder: str, bos: str | None, spans: tuple[tuple[int, int] | None, ...]
) -> tuple[str, tuple[tuple[int, int] | None, ...]]:
    """The BOS token written into a prompt that holds none, after its leading placeholders
    (:attr:`ImageText.bos_in_text`), shifting the character spans after it."""
    if not bos or bos in text:
        return text, spans
    at = 0
    while text.startswith(placeholder, at):
        at += len(placeholder)
    n = len(bos)
    moved = tuple(None if sp is None else tuple(o + n if o >= at else o for o in sp)
                  for sp in spans)  # fmt: skip
    return text[:at] + bos + text[at:], moved


def _overlaps(span: tuple[int, int] | None, a: int, b: int) -> bool:
    return span is not None and a < span[1] and b > span[0]


def _answer_id(tok: Any, text: str, answer: Any, rule: str) -> int:
    if isinstance(answer, int):
        return answer
    sep = "" if not text or text[-1].isspace() else " "
    prompt_ids = tok(text, add_special_tokens=False).input_ids
    full_ids = tok(text + sep + answer, add_special_tokens=False).input_ids
    ids = (
        full_ids[len(prompt_ids) :]
        if full_ids[: len(prompt_ids)] == prompt_ids
        else tok(answer, add_special_tokens=False).input_ids
    )
    if not ids:
        raise ValueError(f"answer {answer!r} tokenizes to nothing")
    check_known(tok, answer, ids, what="answer ")
    if len(ids) > 1 and rule == "single":
        raise ValueError(
            f"answer {answer!r} is {len(ids)} tokens {tok.convert_ids_to_tokens(ids)}: "
            "use a one-token answer, or answer_rule='first' to score its first token"
        )
    return ids[0]


def prepare_inputs(
    model: Any,
    images: Any,
    prompts: str | list[str],
    answers: str | int | list[Any] | None = None,
    *,
    template: Literal["raw", "chat"] = "raw",
    system: str | None = None,
    answer_rule: Literal["single", "first"] = "single",
) -> LVLMInput:
    """Build a left-padded batch from images and prompts (``model.prepare(...)``).

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM` (``self`` when called as ``model.prepare``).
        images: Per prompt: an image, a list of images, or ``None`` (a bare image for one prompt).
        prompts: With ``template="raw"`` (default), complete prompts holding one image
            placeholder per image: ``<image>`` for every family, as in
            ``"USER: <image>\\nWhat is this? ASSISTANT:"``, or the family's own
            (``<|vision_start|><|image_pad|><|vision_end|>`` for Qwen2-VL,
            ``<start_of_image>`` for Gemma 3).
            With ``template="chat"``, bare questions wrapped in the checkpoint's chat template
            (or ``USER: <image>\\n{question} ASSISTANT:`` if it has none), images first.
        answers: Optional answer per prompt (string or token id); its first token is scored.
            An answer the tokenizer maps to its unknown token is refused (not in the vocabulary).
        template: ``"raw"`` or ``"chat"``, see ``prompts``.
        system: System message (``template="chat"`` only).
        answer_rule: ``"single"`` rejects answers of several tokens; ``"first"`` keeps the first.

    Returns:
        The batch; ``groups`` as described in :class:`LVLMInput`.
    """
    tok, it = model.tokenizer, model.image_text
    placeholder = it.placeholder
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    per_example = _images_per_example(images, len(prompts))
    if answers is not None and not isinstance(answers, list | tuple):
        answers = [answers]
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")

    texts, spans = [], []
    for i, (prompt, ims) in enumerate(zip(prompts, per_example, strict=True)):
        if template == "chat":
            text, sys_span, q_span = _render(model, prompt, len(ims), system, it)
            if it.bos_in_text:
                text, (sys_span, q_span) = _bos_in_text(text, placeholder, tok.bos_token,
                                                        (sys_span, q_span))
        elif template == "raw":
            text = prompt
            if placeholder != GENERIC_PLACEHOLDER:
                text = text.replace(GENERIC_PLACEHOLDER, it.alias)
            if it.bos_in_text:
                text = _bos_in_text(text, placeholder, tok.bos_token, ())[0]
            sys_span, q_span = _spans_from_roles(text, placeholder, it.closers)
        else:
            raise ValueError(f"template must be 'raw' or 'chat', got {template!r}")
        marker = next((m for m in it.refused + it.refused_audio if m in text), None)
        if marker is not None:
            what = "audio" if marker in it.refused_audio else "video"
            raise ValueError(f"prompt {i} holds {marker!r}: {what} input is not supported for "
                             f"this model; pass still images, one {placeholder!r} each")
        n_ph = text.count(placeholder)
        if n_ph != len(ims):
            hint = (
                f"write {placeholder!r} where each image goes, e.g. 'USER: {placeholder}\\n"
                "What is this? ASSISTANT:', or pass template='chat' with a bare question"
                if n_ph < len(ims)
                else "pass one image per placeholder"
            )
            raise ValueError(
                f"prompt {i} holds {n_ph} image placeholder(s) {placeholder!r} but "
                f"{len(ims)} image(s) were given: {hint}"
            )
        texts.append(text)
        spans.append((sys_span, q_span))

    n_per = [len(ims) for ims in per_example]
    processed, coords = _process_images(model, per_example)
    # per image: what its placeholder becomes, and the image-token runs in it
    images = [model.vision.placeholder_text(it, processed, k, len(c)) for k, c in enumerate(coords)]
    runs = iter([n for _, r in images for n in r])

    rows, expanded, img = [], [], 0
    bos = tok.bos_token
    for text, span_pair, n in zip(texts, spans, n_per, strict=True):
        own = [e for e, _ in images[img : img + n]]
        n_runs = sum(len(r) for _, r in images[img : img + n])
        img += n
        text, (sys_span, q_span) = _expand(text + it.prompt_end, placeholder, own, span_pair)
        expanded.append(text)
        # a BOS written into the prompt is not doubled, unless the processor does (bos_in_text)
        special = it.bos_in_text or not (bos and text.startswith(bos))
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=special)
        ids, offsets = enc.input_ids, enc.offset_mapping
        if ids.count(model.cfg.image_token_id) != n_runs:
            raise ValueError(
                f"the tokenizer did not keep the image token of {placeholder!r} as one token "
                f"in {text!r}"
            )
        row = []
        for j, (t, (a, b)) in enumerate(zip(ids, offsets, strict=True)):
            if t == model.cfg.image_token_id:
                row += [(t, "image")] * next(runs)
                continue
            row.append((t, _text_group(j, len(ids), t == tok.bos_token_id, a, b, q_span, sys_span)))
        rows.append(row)

    length = max(len(r) for r in rows)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else model.cfg.pad_token_id
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    groups = {g: torch.zeros((len(rows), length), dtype=torch.bool) for g in GROUP_NAMES}
    for i, row in enumerate(rows):
        off = length - len(row)
        input_ids[i, off:] = torch.tensor([t for t, _ in row])
        attention_mask[i, off:] = 1
        for j, (_, g) in enumerate(row):
            groups[g][i, off + j] = True
        groups["final"][i, -1] = True
    groups["text"] = (attention_mask > 0) & ~groups["image"]

    answer_ids = None
    if answers is not None:
        answer_ids = torch.tensor(
            [_answer_id(tok, t, a, answer_rule) for t, a in zip(expanded, answers, strict=True)]
        )
    inp = LVLMInput(
        input_ids=input_ids,
        attention_mask=attention_mask,
        groups=groups,
        pixel_values=processed.get("pixel_values"),
        image_sizes=processed.get("image_sizes"),
        image_grid=processed.get("image_grid_thw"),
        image_tiles=processed.get("num_patches"),
        pixel_attention_mask=processed.get("pixel_attention_mask"),
        image_coords=coords,
        images_per_example=n_per,
        image_extra={k: processed[k] for k in model.vision.extra_keys if k in processed},
        answer_ids=answer_ids,
        texts=texts,
        lvlm_type=model.cfg.lvlm_type,
        image_token_id=model.cfg.image_token_id,
    )
    inp.position_ids = model.vision.rope_positions(input_ids, attention_mask, inp)
    return inp.to(model.cfg.device)


def _process_images(
    model: Any, per_example: list[list[Any]]
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The image processor's output (``image_sizes`` = original ``(height, width)`` unless
    the processor gives them) and the ``(tile, row, col)`` of every image token."""
    flat = upscale_tiny([to_rgb(im) for ims in per_example for im in ims], stacklevel=5)
    if not flat:
        return {}, []
    processed = model.vision.preprocess(model.image_processor, flat)
    sizes = processed.get("image_sizes")
    processed["image_sizes"] = (
        torch.as_tensor(sizes)
        if sizes is not None
        else torch.tensor([[im.height, im.width] for im in flat])
    )
    if "num_patches" in processed:  # InternVL, Idefics3: tiles per image
        processed["num_patches"] = torch.as_tensor(processed["num_patches"])
    return processed, model.vision.token_layout(processed, [len(ims) for ims in per_example])
