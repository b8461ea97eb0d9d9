"""Persistence of a run: the output folder, its fingerprint, result chunks and rankings.

Everything a run computes is a file under ``out`` written atomically (:mod:`lvlm_lens.files`):
``run.json`` (the options a resumed run must share), one prediction file per example, one
metrics chunk per (example, block of masks), the attribution, the rankings and the summary.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from lvlm_lens.files import atomic_json, atomic_save
from lvlm_lens.run.distributed import Shard
from lvlm_lens.run.options import RunOptions


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_out_dir(opts: RunOptions, overwrite: bool, shard: Shard) -> Path:
    """Create ``out`` or check that it belongs to a run with the same options."""
    out = Path(opts.out)
    marker = out / "run.json"
    mine = json.loads(json.dumps(opts.fingerprint(), default=str))
    if marker.exists():
        theirs = json.loads(marker.read_text())
        if theirs != mine:
            a, b = _flat(mine), _flat(theirs)
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if not overwrite:
                raise SystemExit(
                    f"{out} holds a run with other options ({', '.join(changed)} "
                    "differ): use the same options to resume, another --out, or "
                    "--overwrite to discard it"
                )
            if shard.rank == 0:
                shutil.rmtree(out)
    shard.barrier()
    for sub in ("examples", "chunks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if shard.rank == 0 and not marker.exists():
        atomic_json(mine, marker)
    return out


def chunk_path(out: Path, example: int, chunk: int) -> Path:
    """File of one example's metrics for one block of masks."""
    return out / "chunks" / f"ex{example:05d}_c{chunk:04d}.safetensors"


def wait_for_files(paths: list[Path], timeout: float, poll: float = 5.0) -> None:
    """Rank 0 of a SLURM array: wait until the other tasks have written their files."""
    start = time.time()
    while missing := [p for p in paths if not p.exists()]:
        if time.time() - start > timeout:
            raise SystemExit(
                f"{len(missing)} result files still missing after {timeout:.0f}s "
                f"(e.g. {missing[0]}): re-run the same command to finish them"
            )
        time.sleep(poll)


def collect(
    out: Path, n_records: int, n_masks: int, opts: RunOptions, timeout: float
) -> tuple[list[dict], list[int], torch.Tensor]:
    """Merge every example's chunks into ``[n_kept, n_masks]`` metrics."""
    wait_for_files([out / "examples" / f"{i:05d}.json" for i in range(n_records)], timeout)
    infos = [json.loads((out / "examples" / f"{i:05d}.json").read_text()) for i in range(n_records)]
    kept = [i for i, info in enumerate(infos) if info["correct"] or opts.keep_wrong]
    if not kept:
        raise SystemExit(
            "the model answered every example wrongly: nothing to attribute "
            "(use --keep-wrong to attribute its own answers anyway)"
        )
    n_chunks = -(-n_masks // opts.chunk_masks)
    paths = [chunk_path(out, i, c) for i in kept for c in range(n_chunks)]
    wait_for_files(paths, timeout)
    rows = [
        torch.cat([load_file(str(chunk_path(out, i, c)))["metrics"] for c in range(n_chunks)])
        for i in kept
    ]
    return infos, kept, torch.stack(rows)


def save_rankings(path: Path, rankings: dict[str, Tensor]) -> None:
    """Rankings as one safetensors file (names as keys)."""
    atomic_save({k: v.float() for k, v in rankings.items()}, path)


def load_rankings(path: Path) -> dict[str, Tensor]:
    """Inverse of :func:`save_rankings`."""
    return dict(load_file(str(path)))


class CheckpointFiles:
    """Finished pieces of the ranking comparison, one atomically written safetensors file per
    key under ``folder`` (see :class:`~lvlm_lens.attribution.comparison.Checkpoints`)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file of ``key``."""
        return self.folder / (key.replace("/", "__").replace(" ", "_") + ".safetensors")

    def load(self, key: str) -> dict[str, Tensor] | None:
        """The tensors saved under ``key``, or ``None``."""
        path = self.path(key)
        return dict(load_file(str(path))) if path.exists() else None

    def save(self, key: str, tensors: dict[str, Tensor]) -> None:
        """Write ``tensors`` under ``key``, atomically."""
        atomic_save(tensors, self.path(key))
