"""Writing result files atomically: the one way every file of a run or a result is written.

The lowest layer: imports nothing from lvlm_lens. A file written here either exists complete or
not at all, even when the process is killed mid-write.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write`` on a temporary sibling of ``path``, then move it onto ``path``.

    Args:
        path: The destination file (its folder must exist).
        write: Writes the whole file to the path it is given.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # created like any new file (mode 0o666 less the umask), unlike mkstemp's 0o600; writers
    # that recreate the file (safetensors) get that mode back before it is moved into place
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = tmp.stat().st_mode & 0o777
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write tensors (moved to CPU, made contiguous) as one safetensors file, atomically."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(cpu, str(p), metadata))


def atomic_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON (unknown types via ``str``), atomically."""
    text = json.dumps(obj, indent=2, default=str)
    atomic_write(path, lambda p: p.write_text(text))


class Checkpoints(Protocol):
    """Where finished pieces of a long computation are kept, so that a rerun skips them
    (``lvlm_lens.run.store.CheckpointFiles`` keeps each as an atomically written file)."""

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors saved under ``key``, or ``None``."""

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Keep ``tensors`` under ``key``."""


def cached(
    store: Checkpoints | None, key: str, compute: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """``store``'s tensors under ``key``; else ``compute()``, saved there first."""
    if store is not None and (hit := store.load(key)) is not None:
        return hit
    out = compute()
    if store is not None:
        store.save(key, out)
    return out
