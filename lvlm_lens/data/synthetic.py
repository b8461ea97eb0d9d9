"""A seeded synthetic shape set: one main object per image, drawn with PIL.

The object's **class** (:data:`CLASSES`, the semantic content, and the answer) is independent of
its **appearance** (colour, size, fill, texture, background, position), so analyses can ask
whether a mechanism follows the class or the look of an image. Every example comes with its
object mask, from which :func:`~lvlm_lens.data.patch_grid_mask` derives the object vs background
image tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

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
#: Fills: a filled shape, or its outline (a 2-3 px line).
FILLS: tuple[str, ...] = ("filled", "outline")
#: Textures of filled shapes (outlines are always plain).
TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots")
#: Backgrounds: plain white / gray / cream, or per-pixel colour noise around a light gray.
BACKGROUNDS: tuple[str, ...] = ("white", "gray", "cream", "noise")
#: Where the object sits in the image (with jitter).
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


def generate_from_rng(
    n: int, rng: np.random.Generator, image_size: int = 48, classes: Sequence[str] = CLASSES
) -> list[SyntheticExample]:
    """``n`` synthetic examples drawn from ``rng`` (a caller's own stream, e.g. the toy's
    training batches); :func:`generate_dataset` is this on a fresh seeded generator."""
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
    return generate_from_rng(n, np.random.default_rng(seed), image_size, classes)
