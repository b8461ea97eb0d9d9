"""Content fingerprints: what a run's results were computed from, beyond its options.

A run's fingerprint (``run.json``) holds its options plus the content of the model folder and
of the baseline image; each example's prediction, chunks and comparison pieces carry the key of
its row (image bytes, prompt, answer, id, mask), so an edited row is recomputed alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lvlm_lens.run.options import RunOptions
from lvlm_lens.toy import toy_checkpoint_path

FULL_HASH_BYTES = 64 * 2**20  # files up to this size are hashed in full; larger: size + mtime
_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """``sha256:...`` of a file up to :data:`FULL_HASH_BYTES`, else ``stat:SIZE:MTIME_NS``
    (cached by path, size and mtime, so a rewritten file is read again)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        if st.st_size > FULL_HASH_BYTES:
            _digests[key] = f"stat:{st.st_size}:{st.st_mtime_ns}"
        else:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(2**20), b""):
                    h.update(block)
            _digests[key] = "sha256:" + h.hexdigest()
    return _digests[key]


def model_fingerprint(model: str | None) -> dict[str, str]:
    """Digest of every file of a model folder (the bundled toy when ``None``); a hub id is
    kept as given (its files are the hub's)."""
    folder = toy_checkpoint_path() if model is None else Path(model)
    if not folder.is_dir():
        return {} if model is None else {"hub_id": str(model)}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {str(p.relative_to(folder)): file_digest(p) for p in files}


def run_fingerprint(opts: RunOptions) -> dict[str, Any]:
    """What must not change between a run and its resumption: the options, the model
    folder's files and the baseline image's bytes."""
    image = opts.baseline_image
    inputs = {
        "model_files": model_fingerprint(opts.model),
        "baseline_image": file_digest(image) if image and Path(image).is_file() else None,
    }
    return opts.fingerprint() | {"inputs": inputs}


def row_key(record: Any) -> str:
    """A short hash of one example's content: image bytes, prompt, answer, id and mask."""
    h = hashlib.sha256()
    image = record.image
    if isinstance(image, Image.Image):
        h.update(f"{image.mode}{image.size}".encode() + image.tobytes())
    else:
        h.update(file_digest(image).encode())
    for text in (record.prompt, record.answer, record.id):
        h.update(b"\0" + str(text).encode())
    mask = getattr(record, "mask", None)
    if mask is not None:
        arr = np.asarray(mask)
        h.update(f"\0{arr.shape}".encode() + np.ascontiguousarray(arr, bool).tobytes())
    return h.hexdigest()[:16]
