"""Real data from a Hugging Face ``datasets`` dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lvlm_lens.data.images import to_8bit
from lvlm_lens.data.records import Record, row_record


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
        image = to_8bit(_hf_image(row[image_column], where)).convert("RGB")
        mask = None
        if mask_column is not None and row[mask_column] is not None:
            mask = row[mask_column]
            mask = _hf_image(mask, where) if isinstance(mask, dict | str) else mask
        records.append(
            row_record(
                where, seen, image=image, size=image.size,
                prompt=prompt if prompt_column is None else row[prompt_column],
                answer=row[answer_column],
                rid=str(i) if id_column is None else str(row[id_column]),
                bbox=None if bbox_column is None else row[bbox_column], mask=mask,
            )  # fmt: skip
        )
    return records
