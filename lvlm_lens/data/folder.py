"""Real data from a folder of images described by ``data.csv`` or ``data.jsonl``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lvlm_lens.data.images import open_image, to_8bit
from lvlm_lens.data.records import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    Record,
    present,
    row_record,
)


def _image_size(path: Path, where: str) -> tuple[int, int]:
    """The size of an image that decodes fully (:func:`open_image`), checked at load."""
    with open_image(path, where) as im:
        return im.size


def _text(file: Path) -> str:
    """The file as text: UTF-8, with or without the byte-order mark spreadsheets write."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{file} line {line}: byte {data[err.start]:#04x} is not UTF-8: save the file as "
            "UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)"
        ) from None


def _read_table(file: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a CSV / JSONL file as (location, dict)."""
    if file.suffix == ".csv":
        with io.StringIO(_text(file), newline="") as f:
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
        for i, line in enumerate(_text(file).splitlines()):
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
            if not present(row.get(col)):
                raise ValueError(f"{where}: empty {col!r}")
        image = Path(str(row["image"]))
        image = image if image.is_absolute() else root / image
        size = _image_size(image, where)
        if present(row.get("bbox")) and present(row.get("mask")):
            raise ValueError(f"{where}: give a bbox or a mask, not both")
        mask = None
        if present(row.get("mask")):
            mpath = Path(str(row["mask"]))
            mpath = mpath if mpath.is_absolute() else root / mpath
            if not mpath.is_file():
                raise FileNotFoundError(f"{where}: mask file {str(mpath)!r} not found")
            with open_image(mpath, f"{where} mask") as m:
                mask = to_8bit(m).convert("L")
        rid = str(row["id"]) if present(row.get("id")) else str(i)
        records.append(
            row_record(
                where, seen, image=image, size=size, prompt=row["prompt"],
                answer=row["answer"], rid=rid, bbox=row.get("bbox"), mask=mask,
            )  # fmt: skip
        )
    if not records:
        raise ValueError(f"{file} has no rows")
    return records
