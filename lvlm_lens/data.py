"""Datasets: a seeded synthetic shape set, prompts for it, and loaders for real image folders.

Synthetic set: one main object per image, drawn with PIL. The object's **class**
(:data:`CLASSES`, the semantic content, and the answer) is independent of its **appearance**
(colour, size, fill, texture, background, position), so analyses can ask whether a mechanism
follows the class or the look of an image. Every example comes with its object mask, from which
:func:`patch_grid_mask` derives the object vs background image tokens.

Prompts: :data:`IMAGE_QUESTIONS` (object identification from the image, raw LLaVA style) and the
parallel :data:`TEXT_QUESTIONS`, where the same question follows a description of the object in
words instead of the image (``text_prompt``). All their words are in :data:`VOCABULARY`, the
word list of the toy model's tokenizer.

Real data: :func:`load_folder` (a folder of images plus ``data.csv`` / ``data.jsonl``) and
:func:`load_hf_dataset` give the same :class:`Record` type as :func:`synthetic_records`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

# ---------------------------------------------------------------------------------------------
# classes and appearance
# ---------------------------------------------------------------------------------------------

#: Object classes (one word each; the answer to the identification prompts). A ring is left out
#: on purpose: an outlined circle would be one.
CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "arrow",
    "diamond",
)

#: Object colours (name -> base RGB; each drawing jitters the channels by up to +-15).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 45),
    "blue": (35, 70, 225),
    "yellow": (240, 215, 25),
    "orange": (250, 135, 20),
    "purple": (140, 45, 195),
    "pink": (250, 115, 185),
    "brown": (135, 80, 30),
}
#: Object sizes: name -> range of the half-extent in pixels at 48 px (scaled with image_size).
SIZES: dict[str, tuple[float, float]] = {"small": (9.0, 11.0), "large": (14.0, 18.0)}
FILLS: tuple[str, ...] = ("filled", "outline")
TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots")
#: Backgrounds: plain white / gray / cream, or per-pixel colour noise around a light gray.
BACKGROUNDS: tuple[str, ...] = ("white", "gray", "cream", "noise")
POSITIONS: tuple[str, ...] = ("center", "left", "right", "top", "bottom")

_TEXTURE_WORD = {"plain": "", "stripes": "striped", "dots": "dotted"}
_SUPERSAMPLE = 4


def _unit_polygon(label: str) -> list[tuple[float, float]] | None:
    """Outline of a class in [-1, 1]^2 (y down); ``None`` for the circle (an ellipse)."""
    if label == "circle":
        return None
    if label == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if label == "triangle":
        return [(0.0, -0.95), (0.95, 0.75), (-0.95, 0.75)]
    if label == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.42
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(ang), rad * math.sin(ang) + 0.1))
        return pts
    if label == "cross":
        a, w = 0.95, 0.32
        return [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
                (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]  # fmt: skip
    if label == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        y = y - (y.max() + y.min()) / 2
        x, y = 0.95 * x / np.abs(x).max(), 0.95 * y / np.abs(y).max()
        return list(zip(x.tolist(), y.tolist(), strict=True))
    if label == "arrow":
        return [(-0.95, -0.22), (0.15, -0.22), (0.15, -0.65), (0.95, 0.0),
                (0.15, 0.65), (0.15, 0.22), (-0.95, 0.22)]  # fmt: skip
    if label == "diamond":
        return [(0.0, -0.95), (0.7, 0.0), (0.0, 0.95), (-0.7, 0.0)]
    raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")


def _alpha(label: str, cx: float, cy: float, r: float, size: int, outline: float | None):
    """Anti-aliased coverage [size, size] in [0, 1] of one shape (filled, or an outline)."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    width = 0 if outline is None else max(1, round(outline * s))
    poly = _unit_polygon(label)
    if poly is None:
        rr = 0.9 * r
        box = [(cx - rr) * s, (cy - rr) * s, (cx + rr) * s, (cy + rr) * s]
        if outline is None:
            draw.ellipse(box, fill=255)
        else:
            draw.ellipse(box, outline=255, width=width)
    else:
        pts = [((cx + r * x) * s, (cy + r * y) * s) for x, y in poly]
        if outline is None:
            draw.polygon(pts, fill=255)
        else:
            draw.polygon(pts, outline=255, width=width)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


@dataclass
class SyntheticExample:
    """One synthetic image with its class, object mask and appearance.

    Attributes:
        image: The RGB image.
        label: The object's class, one word of :data:`CLASSES` (one token of the toy vocabulary).
        mask: ``[H, W]`` bool, True at object pixels (coverage >= 50 % after anti-aliasing).
        appearance: ``colour``, ``size``, ``fill``, ``texture``, ``background``, ``position``.
        description: The object in words, e.g. ``"a small red star"``,
            ``"a large blue outlined heart"`` or ``"a small pink dotted cross"`` (words of
            :data:`VOCABULARY` only).
    """

    image: Image.Image
    label: str
    mask: np.ndarray
    appearance: dict[str, str]
    description: str


def describe(label: str, appearance: dict[str, str]) -> str:
    """The words for an object: ``a {size} {colour} [outlined] [striped|dotted] {label}``."""
    words = ["a", appearance["size"], appearance["colour"]]
    if appearance["fill"] == "outline":
        words.append("outlined")
    if _TEXTURE_WORD[appearance["texture"]]:
        words.append(_TEXTURE_WORD[appearance["texture"]])
    return " ".join([*words, label])


def _centre(position: str, r: float, size: int, rng: np.random.Generator) -> tuple[float, float]:
    lo, hi, mid = r + 1.0, size - 1.0 - r, size / 2.0
    jitter = max(0.0, (hi - lo) / 6.0)
    cx = mid + rng.uniform(-jitter, jitter)
    cy = mid + rng.uniform(-jitter, jitter)
    edge = rng.uniform(0.0, min(3.0, max(0.0, (hi - lo) / 4.0)))
    if position == "left":
        cx = lo + edge
    elif position == "right":
        cx = hi - edge
    elif position == "top":
        cy = lo + edge
    elif position == "bottom":
        cy = hi - edge
    return float(np.clip(cx, lo, hi)), float(np.clip(cy, lo, hi))


def _background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    if name == "noise":
        base = rng.uniform(150, 210)
        noise = rng.normal(0.0, 20.0, size=(size, size, 3))
        return np.clip(base + noise, 0, 255).astype(np.float32)
    if name == "cream":
        return np.full((size, size, 3), (245, 235, 200), dtype=np.float32) + rng.uniform(-10, 10)
    level = {"white": (235, 255), "gray": (170, 200)}[name]
    return np.full((size, size, 3), rng.uniform(*level), dtype=np.float32)


def _texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """[size, size] bool: where the object takes its shade colour."""
    y, x = np.mgrid[0:size, 0:size]
    if name == "stripes":
        period = int(rng.integers(5, 8))
        return ((x + y + int(rng.integers(0, period))) % period) < period // 2
    if name == "dots":
        period = int(rng.integers(4, 6))
        ox, oy = rng.integers(0, period, size=2)
        return ((x + ox) % period < 2) & ((y + oy) % period < 2)
    return np.zeros((size, size), dtype=bool)


def render_example(
    label: str, appearance: dict[str, str], rng: np.random.Generator, image_size: int = 48
) -> SyntheticExample:
    """Draw one object of class ``label`` with the given appearance (jitter drawn from ``rng``).

    Args:
        label: One of :data:`CLASSES`.
        appearance: ``colour``, ``size``, ``fill``, ``texture``, ``background``, ``position``
            (names from :data:`COLOURS`, :data:`SIZES`, :data:`FILLS`, :data:`TEXTURES`,
            :data:`BACKGROUNDS`, :data:`POSITIONS`).
        rng: Source of the continuous jitter (exact size, offset, colour shade, noise).
        image_size: Side of the square image in pixels.
    """
    scale = image_size / 48.0
    r = rng.uniform(*SIZES[appearance["size"]]) * scale
    cx, cy = _centre(appearance["position"], r, image_size, rng)
    outline = None
    if appearance["fill"] == "outline":
        outline = (2.0 if appearance["size"] == "small" else 3.0) * scale
    alpha = _alpha(label, cx, cy, r, image_size, outline)

    colour = np.clip(np.array(COLOURS[appearance["colour"]]) + rng.integers(-15, 16, 3), 0, 255)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    shade = colour * 0.4 if luminance > 110 else colour * 0.4 + 255 * 0.6
    obj = np.broadcast_to(colour, (image_size, image_size, 3)).astype(np.float32)
    obj = np.where(_texture(appearance["texture"], image_size, rng)[..., None], shade, obj)
    bg = _background(appearance["background"], image_size, rng)
    pixels = bg * (1.0 - alpha[..., None]) + obj * alpha[..., None]
    image = Image.fromarray(np.round(pixels).astype(np.uint8), "RGB")
    return SyntheticExample(
        image=image,
        label=label,
        mask=alpha >= 0.5,
        appearance=dict(appearance),
        description=describe(label, appearance),
    )


def _generate(
    n: int, rng: np.random.Generator, image_size: int, classes: Sequence[str]
) -> list[SyntheticExample]:
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes is empty")
    for c in classes:
        _unit_polygon(c)  # validates the name
    labels = [classes[i % len(classes)] for i in range(n)]
    order = rng.permutation(n)
    out = []
    for i in order.tolist():
        appearance = {
            "colour": str(rng.choice(list(COLOURS))),
            "size": str(rng.choice(list(SIZES))),
            "fill": str(rng.choice(FILLS)),
            "texture": str(rng.choice(TEXTURES)),  # outlines are always plain, see below
            "background": str(rng.choice(BACKGROUNDS)),
            "position": str(rng.choice(POSITIONS)),
        }
        if appearance["fill"] == "outline":
            appearance["texture"] = "plain"  # a texture on a 2-3 px line reads as a dashed line
        out.append(render_example(labels[i], appearance, rng, image_size))
    return out


def generate_dataset(
    n: int, seed: int, image_size: int = 48, classes: Sequence[str] = CLASSES
) -> list[SyntheticExample]:
    """``n`` synthetic examples, deterministic per ``seed``.

    Classes are balanced (counts differ by at most one; in random order); every appearance
    attribute is drawn independently and uniformly, except that outlines are never textured
    (``texture`` is ``"plain"`` for every ``"outline"``).
    """
    return _generate(n, np.random.default_rng(seed), image_size, classes)


def patch_grid_mask(
    mask: Any,
    grid: int | tuple[int, int],
    *,
    threshold: float = 0.25,
    center_crop: bool = False,
) -> torch.Tensor:
    """Project a pixel mask onto the vision tower's patch grid.

    A patch is an *object* patch when at least ``threshold`` (default 25 %) of its pixels are
    object pixels; sides that the grid does not divide are pooled adaptively
    (``adaptive_avg_pool2d``). Use this on masks in the image frame the tower sees.

    Args:
        mask: ``[H, W]`` bool array / tensor (True at object pixels).
        grid: Patches per side (``image_size // patch_size``, 6 for the toy), or ``(rows, cols)``.
        threshold: Object fraction at or above which a patch counts as object.
        center_crop: First crop the mask to its central square, as a CLIP processor's
            shortest-edge resize + center crop does to a non-square image.

    Returns:
        ``[rows, cols]`` bool tensor, row-major like the image tokens.
    """
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {tuple(m.shape)}")
    if center_crop:
        h, w = m.shape
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        m = m[top : top + s, left : left + s]
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    frac = torch.nn.functional.adaptive_avg_pool2d(m[None, None], (rows, cols))[0, 0]
    return frac >= threshold - 1e-6


# ---------------------------------------------------------------------------------------------
# prompts and vocabulary
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# records: one input type for synthetic and real data
# ---------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One image + prompt + answer example, as the analyses and the CLI take it.

    Attributes:
        image: A PIL image, or the path of an image file (opened by ``model.prepare``).
        prompt: A raw prompt with one ``<image>`` placeholder (e.g. :func:`image_prompt`).
        answer: The expected answer (its first token is scored).
        mask: Optional ``[H, W]`` bool object mask in the image's pixel frame.
        id: Identifier (unique within a dataset).
        meta: Anything else known about the example (class, appearance, description, bbox...).
    """

    image: Image.Image | Path
    prompt: str
    answer: str
    mask: np.ndarray | None = None
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def load_image(self) -> Image.Image:
        """The image as RGB PIL (opens the file for path records)."""
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        with Image.open(self.image) as im:
            return im.convert("RGB")


def synthetic_records(
    n: int, seed: int, image_size: int = 48, prompt_index: int = 0
) -> list[Record]:
    """The synthetic set as :class:`Record` s: ``image_prompt(prompt_index)``, answer = class.

    ``meta`` holds ``label``, ``appearance`` and ``description``.
    """
    prompt = image_prompt(prompt_index)
    return [
        Record(
            image=ex.image,
            prompt=prompt,
            answer=ex.label,
            mask=ex.mask,
            id=f"synthetic-{seed}-{i}",
            meta={"label": ex.label, "appearance": ex.appearance, "description": ex.description},
        )
        for i, ex in enumerate(generate_dataset(n, seed, image_size))
    ]


REQUIRED_COLUMNS = ("image", "prompt", "answer")
OPTIONAL_COLUMNS = ("bbox", "mask", "id")


def _parse_bbox(value: Any, size: tuple[int, int], where: str) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` (or a 4-list) in pixels, x1/y1 exclusive, inside a (width, height)."""
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        x0, y0, x1, y1 = (round(float(p)) for p in parts)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: bbox {value!r} is not 'x0,y0,x1,y1'") from err
    w, h = size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(
            f"{where}: bbox {value!r} is empty or outside the {w}x{h} image "
            "(expected 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height)"
        )
    return x0, y0, x1, y1


def _bbox_mask(box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _mask_array(mask: Any, size: tuple[int, int], where: str) -> np.ndarray:
    """A mask image / array -> [H, W] bool (>= 128 for 8-bit images, nonzero otherwise)."""
    if isinstance(mask, Image.Image):
        arr = np.asarray(mask.convert("L")) >= 128
    else:
        arr = np.asarray(mask)
        if arr.ndim == 3:
            arr = arr.max(-1)
        arr = arr >= 128 if arr.dtype == np.uint8 else arr.astype(bool)
    if arr.shape != (size[1], size[0]):
        raise ValueError(
            f"{where}: mask is {arr.shape[1]}x{arr.shape[0]} but the image is {size[0]}x{size[1]}"
        )
    return arr


def _image_size(path: Path, where: str) -> tuple[int, int]:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file {str(path)!r} not found")
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{where}: {str(path)!r} is not a readable image ({err})") from err


def _read_table(file: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a CSV / JSONL file as (location, dict)."""
    if file.suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ValueError(
                    f"{file}: missing column(s) {missing}; found {header}. Required: "
                    f"{list(REQUIRED_COLUMNS)}, optional: {list(OPTIONAL_COLUMNS)}"
                )
            rows = []
            for i, row in enumerate(reader):
                clean = {(k or "").strip(): (v.strip() if isinstance(v, str) else v)
                         for k, v in row.items()}  # fmt: skip
                rows.append((f"{file.name} row {i + 1}", clean))
            return rows
    if file.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            where = f"{file.name} line {i + 1}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = [c for c in REQUIRED_COLUMNS if c not in row]
            if missing:
                raise ValueError(
                    f"{where}: missing field(s) {missing}; found {sorted(row)}. Required: "
                    f"{list(REQUIRED_COLUMNS)}, optional: {list(OPTIONAL_COLUMNS)}"
                )
            rows.append((where, row))
        return rows
    raise ValueError(f"{file}: expected a .csv or .jsonl file")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def load_folder(path: str | Path) -> list[Record]:
    """Load a folder of images described by ``data.csv`` or ``data.jsonl``.

    Columns / fields: ``image`` (file path, relative to the folder), ``prompt`` (a raw prompt
    with ``<image>``), ``answer``; optional ``bbox`` (``"x0,y0,x1,y1"`` in pixels, x1/y1
    exclusive; a 4-list in JSONL), ``mask`` (path of a mask image, white = object, same size
    as the image) and ``id`` (default: the row number). Images are kept as paths.

    Args:
        path: The folder, or the CSV / JSONL file itself.

    Returns:
        One :class:`Record` per row; ``meta`` holds ``bbox`` when one was given.

    Raises:
        FileNotFoundError: No table, or a missing image / mask file.
        ValueError: Missing columns, empty values, bad bbox / mask, duplicate ids.
    """
    path = Path(path)
    if path.is_file():
        file = path
    elif path.is_dir():
        found = [path / n for n in ("data.csv", "data.jsonl") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(
                f"{path} holds neither data.csv nor data.jsonl (columns: image, prompt, answer"
                "; optional bbox, mask, id)"
            )
        if len(found) > 1:
            raise ValueError(
                f"{path} holds both data.csv and data.jsonl: keep one, or pass the file"
            )
        file = found[0]
    else:
        raise FileNotFoundError(f"{path} does not exist")

    root = file.parent
    records, seen = [], set()
    for i, (where, row) in enumerate(_read_table(file)):
        for col in REQUIRED_COLUMNS:
            if not _present(row.get(col)):
                raise ValueError(f"{where}: empty {col!r}")
        image = Path(str(row["image"]))
        image = image if image.is_absolute() else root / image
        size = _image_size(image, where)
        meta: dict[str, Any] = {}
        mask = None
        has_bbox, has_mask = _present(row.get("bbox")), _present(row.get("mask"))
        if has_bbox and has_mask:
            raise ValueError(f"{where}: give a bbox or a mask, not both")
        if has_bbox:
            box = _parse_bbox(row["bbox"], size, where)
            meta["bbox"] = box
            mask = _bbox_mask(box, size)
        elif has_mask:
            mpath = Path(str(row["mask"]))
            mpath = mpath if mpath.is_absolute() else root / mpath
            if not mpath.is_file():
                raise FileNotFoundError(f"{where}: mask file {str(mpath)!r} not found")
            with Image.open(mpath) as m:
                mask = _mask_array(m, size, where)
        rid = str(row["id"]) if _present(row.get("id")) else str(i)
        if rid in seen:
            raise ValueError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        records.append(
            Record(
                image=image,
                prompt=str(row["prompt"]),
                answer=str(row["answer"]).strip(),
                mask=mask,
                id=rid,
                meta=meta,
            )  # fmt: skip
        )
    if not records:
        raise ValueError(f"{file} has no rows")
    return records


def _hf_image(value: Any, where: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        import io

        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        return Image.open(value["path"])
    if isinstance(value, str | Path):
        return Image.open(value)
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    raise ValueError(f"{where}: cannot read an image from a {type(value).__name__}")


def load_hf_dataset(
    name_or_obj: Any,
    image_column: str = "image",
    prompt_column: str | None = "prompt",
    answer_column: str = "answer",
    split: str = "train",
    *,
    prompt: str | None = None,
    bbox_column: str | None = None,
    mask_column: str | None = None,
    id_column: str | None = None,
    limit: int | None = None,
    **load_kwargs: Any,
) -> list[Record]:
    """Records from a Hugging Face ``datasets`` dataset (needs the ``datasets`` package).

    Args:
        name_or_obj: A ``Dataset`` / ``DatasetDict``, a folder written by ``save_to_disk``, or a
            name / path for ``datasets.load_dataset``.
        image_column: Column of images (PIL, ``{"bytes", "path"}``, a path or an array).
        prompt_column: Column of raw prompts; ``None`` to use ``prompt`` for every row.
        answer_column: Column of answers.
        split: Split to read (from a ``DatasetDict`` or ``load_dataset``).
        prompt: The prompt for every row when ``prompt_column`` is ``None``.
        bbox_column: Optional ``x0,y0,x1,y1`` boxes (string or 4-list, pixels).
        mask_column: Optional mask images / arrays.
        id_column: Optional ids (default: the row number).
        limit: Read only the first ``limit`` rows.
        **load_kwargs: Passed to ``datasets.load_dataset``.

    Raises:
        ImportError: ``datasets`` is not installed.
        ValueError: Missing split or columns, or a bad row.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "load_hf_dataset needs the `datasets` package (pip install datasets); or export the "
            "data as a folder of images with data.csv / data.jsonl and use load_folder"
        ) from err
    ds = name_or_obj
    if isinstance(ds, str | Path):
        folder = Path(ds)
        if folder.is_dir() and (
            (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()
        ):
            ds = datasets.load_from_disk(str(folder))
        else:
            ds = datasets.load_dataset(str(ds), split=split, **load_kwargs)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"no split {split!r}; the dataset has {list(ds)}")
        ds = ds[split]
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset or DatasetDict, got {type(ds).__name__}")
    if prompt_column is None and prompt is None:
        raise ValueError("give prompt_column, or prompt= to use one prompt for every row")
    wanted = [image_column, prompt_column, answer_column, bbox_column, mask_column, id_column]
    missing = [c for c in wanted if c is not None and c not in ds.column_names]
    if missing:
        raise ValueError(f"missing column(s) {missing}; the dataset has {ds.column_names}")
    n = len(ds) if limit is None else min(limit, len(ds))
    records, seen = [], set()
    for i in range(n):
        row, where = ds[i], f"row {i}"
        image = _hf_image(row[image_column], where).convert("RGB")
        text = prompt if prompt_column is None else row[prompt_column]
        answer = row[answer_column]
        if not _present(text) or not _present(answer):
            raise ValueError(f"{where}: empty prompt or answer")
        mask, meta = None, {}
        if bbox_column is not None and _present(row[bbox_column]):
            box = _parse_bbox(row[bbox_column], image.size, where)
            meta["bbox"] = box
            mask = _bbox_mask(box, image.size)
        if mask_column is not None and row[mask_column] is not None:
            value = row[mask_column]
            if isinstance(value, dict | str):
                value = _hf_image(value, where)
            mask = _mask_array(value, image.size, where)
        rid = str(row[id_column]) if id_column is not None else str(i)
        if rid in seen:
            raise ValueError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        records.append(
            Record(
                image=image,
                prompt=str(text),
                answer=str(answer).strip(),
                mask=mask,
                id=rid,
                meta=meta,
            )  # fmt: skip
        )
    return records
