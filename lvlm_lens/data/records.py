"""One input type for synthetic and real data (:class:`Record`), and the row checks shared by
the real-data loaders (:mod:`~lvlm_lens.data.folder`, :mod:`~lvlm_lens.data.hf_datasets`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lvlm_lens.data.images import open_image, to_8bit
from lvlm_lens.data.prompts import image_prompt
from lvlm_lens.data.synthetic import generate_dataset


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
            return to_8bit(self.image).convert("RGB")
        with open_image(self.image, f"example {self.id!r}") as im:
            return to_8bit(im).convert("RGB")


def synthetic_records(
    n: int, seed: int, image_size: int = 48, prompt_index: int = 0
) -> list[Record]:
    """The synthetic set as :class:`Record` objects: ``image_prompt(prompt_index)``, answer = class.

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


#: Columns every row of a ``data.csv`` / ``data.jsonl`` (or an HF dataset) must have.
REQUIRED_COLUMNS = ("image", "prompt", "answer")
#: Columns a row may have: an object ``bbox`` or ``mask``, and an ``id``.
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


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def present(value: Any) -> bool:
    """Whether a table cell holds a value (not missing, not blank)."""
    return _present(value)


def row_record(
    where: str,
    seen: set[str],
    *,
    image: Image.Image | Path,
    size: tuple[int, int],
    prompt: Any,
    answer: Any,
    rid: str,
    bbox: Any = None,
    mask: Any = None,
) -> Record:
    """One loaded table row as a :class:`Record`, after the checks every loader makes.

    Args:
        where: Where the row is (``"data.csv row 3"``), for error messages.
        seen: Ids of the rows before it (updated): a duplicate id is refused.
        image: The image (PIL or file path) and ``size`` its (width, height).
        prompt: The raw prompt, ``answer`` the expected answer and ``rid`` the row's id.
        bbox: Optional ``x0,y0,x1,y1`` box (string or 4-list, pixels).
        mask: Optional mask image / array (same size as the image).
    """
    if not _present(prompt) or not _present(answer):
        raise ValueError(f"{where}: empty prompt or answer")
    meta: dict[str, Any] = {"where": where}
    if _present(bbox):
        meta["bbox"] = _parse_bbox(bbox, size, where)
    if mask is not None:  # a mask wins over a box
        mask = _mask_array(mask, size, where)
    elif "bbox" in meta:
        mask = _bbox_mask(meta["bbox"], size)
    if rid in seen:
        raise ValueError(f"{where}: duplicate id {rid!r}")
    seen.add(rid)
    return Record(image, str(prompt), str(answer).strip(), mask, rid, meta)
