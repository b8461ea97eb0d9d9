"""Persistence of a run: the output folder, its fingerprint, predictions, result chunks and
comparison pieces (what the report is drawn from: :mod:`lvlm_lens.run.report_files`).

Everything a run computes is a file under ``out`` written atomically (:mod:`lvlm_lens.files`):
``run.json`` (the options a resumed run must share), one prediction file per example, one
metrics chunk per (example, block of masks) carrying its fingerprint, the attribution, the
rankings, the curves, the example views and the summary. ``lvlm-lens report`` redraws the
report from these files alone. A folder or file that cannot be used raises
:class:`~lvlm_lens.errors.RunError`, one line naming it and what to do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from lvlm_lens.errors import RunError
from lvlm_lens.files import atomic_json, atomic_save
from lvlm_lens.run.distributed import Shard
from lvlm_lens.run.fingerprint import run_fingerprint
from lvlm_lens.run.lock import LOCK_NAME, acquire_lock
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.outcome import AttributedExample


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# what a run writes at the top of ``out``: all that ``--overwrite`` may remove
RUN_ENTRIES = frozenset({
    "run.json", "examples", "chunks", "comparison", "attribution", "attribution.csv",
    "attribution.json", "attribution.safetensors", "rankings.safetensors", "curves.safetensors",
    "views", "views.json", "views.safetensors", "summary.json", "claims.json", "paired.csv",
    "heads_needed.csv", "flow.csv", "knockout.csv", "report.html", "figures",
})  # fmt: skip


def _is_run_entry(path: Path) -> bool:
    name = path.name
    if name == LOCK_NAME:
        return True
    return name in RUN_ENTRIES or (path.is_file() and name.endswith(".png")) or (
        name.startswith(".") and name.endswith(".tmp")
    )


def discard_run(out: Path) -> None:
    """Remove the files a run wrote in ``out``; refuse (before removing anything) if the folder
    holds anything else, so ``--overwrite`` never deletes a user's data or model."""
    foreign = sorted(p.name for p in out.iterdir() if not _is_run_entry(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunError(
            f"--out {out} holds files no run wrote ({shown}): --overwrite removes only a run's "
            "files, so move those away or pass another --out"
        )
    for entry in out.iterdir():
        if entry.name == LOCK_NAME:  # this run's own lock
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_out_dir(opts: RunOptions, overwrite: bool, shard: Shard) -> Path:
    """Create ``out`` or check that it belongs to a run with the same options."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file: pass a folder (it is created if missing)")
    marker = out / "run.json"
    mine = json.loads(json.dumps(run_fingerprint(opts), default=str))
    if shard.rank == 0:  # before the options check: two fresh runs cannot both pass it
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"--out {out}: cannot create the folder ({err.strerror})") from err
        acquire_lock(out)
    if marker.exists():
        try:
            theirs = json.loads(marker.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if not overwrite:
                raise RunError(
                    f"{marker} is damaged ({str(err).splitlines()[0]}): pass --overwrite to "
                    "discard this run and start again, or another --out"
                ) from None
            theirs = None
        if theirs != mine:
            a, b = _flat(mine), _flat(theirs or {})
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if not overwrite:
                raise RunError(
                    f"{out} holds a run with other options ({', '.join(changed)} "
                    "differ): use the same options to resume, another --out, or "
                    "--overwrite to discard it"
                )
            if shard.rank == 0:
                discard_run(out)
    shard.barrier()
    try:
        for sub in ("examples", "chunks"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"--out {out}: cannot create the folder ({err.strerror})") from err
    if shard.rank == 0 and not marker.exists():
        atomic_json(mine, marker)
    return out


def options_key(opts: RunOptions) -> str:
    """A short hash of the run's fingerprint (options, model files, baseline image), stored
    in every chunk."""
    text = json.dumps(run_fingerprint(opts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def wait_timeout(shard: Shard, timeout: float) -> float:
    """How long rank 0 may wait for other processes' files: only a SLURM array (several
    processes, no process group) writes them after rank 0 gets there; alone or after a
    torchrun barrier, a missing file is an error at once."""
    return timeout if shard.world > 1 and not shard.synchronised else 0.0


def wait_for_files(paths: list[Path], timeout: float, poll: float = 5.0) -> None:
    """Rank 0 of a SLURM array: wait until the other tasks have written their files."""
    start = time.time()
    while missing := [p for p in paths if not p.exists()]:
        if time.time() - start >= timeout:
            raise RunError(
                f"{len(missing)} result files still missing after {timeout:.0f}s "
                f"(e.g. {missing[0]}): re-run the same command to finish them"
            )
        time.sleep(min(poll, max(0.0, timeout - (time.time() - start))))


def _clear_stale(path: Path) -> None:
    """Remove temporary files a killed write of ``path`` left (only ``path``'s one writer calls
    this, so no write in progress is touched)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


# predictions ---------------------------------------------------------------------------------
def prediction_path(out: Path, example: int) -> Path:
    """File of one example's answer, prediction and correctness."""
    return out / "examples" / f"{example:05d}.json"


def load_prediction(out: Path, example: int, row: str | None = None) -> dict | None:
    """The stored prediction of an example; ``None`` if missing or unreadable (then removed),
    or computed from another row than ``row`` (see :func:`forget_example`). Called by the
    example's owner only."""
    path = prediction_path(out, example)
    _clear_stale(path)
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        warnings.warn(f"{path} is damaged ({err}): computing it again", stacklevel=2)
        path.unlink(missing_ok=True)
        return None
    if not isinstance(info, dict) or "correct" not in info:
        warnings.warn(f"{path} is not a prediction file: computing it again", stacklevel=2)
        path.unlink(missing_ok=True)
        return None
    return info if row is None or info.get("row") == row else None


def save_prediction(out: Path, example: AttributedExample) -> None:
    """Write an example's prediction (:meth:`AttributedExample.to_json`), atomically."""
    path = prediction_path(out, example.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(example.to_json(), path)


def forget_example(out: Path, example: int) -> None:
    """Remove an example's prediction and chunks (its row changed since they were computed)."""
    prediction_path(out, example).unlink(missing_ok=True)
    for path in (out / "chunks").glob(f"ex{example:05d}_c*.safetensors"):
        path.unlink(missing_ok=True)


# chunks --------------------------------------------------------------------------------------
def chunk_path(out: Path, example: int, chunk: int) -> Path:
    """File of one example's metrics for one block of masks."""
    return out / "chunks" / f"ex{example:05d}_c{chunk:04d}.safetensors"


def chunk_fingerprint(
    options: str, example: int, example_id: str, chunk: int, n_masks: int, row: str = ""
) -> dict[str, str]:
    """What a chunk must belong to: the run's options key, the example and its row's content
    key, the block of masks."""
    return {"options": options, "example": str(example), "example_id": str(example_id),
            "row": row, "chunk": str(chunk), "n_masks": str(n_masks)}  # fmt: skip


def save_chunk(out: Path, example: int, chunk: int, metrics: Tensor, meta: dict[str, str]) -> None:
    """Write one chunk with its fingerprint in the safetensors metadata."""
    atomic_save({"metrics": metrics}, chunk_path(out, example, chunk), meta)


def _read_chunk(path: Path, meta: dict[str, str]) -> tuple[Tensor | None, str]:
    """The chunk's metrics, or ``None`` and what is wrong with it."""
    try:
        with safe_open(str(path), "pt") as f:
            stored, metrics = f.metadata() or {}, f.get_tensor("metrics")
    except Exception as err:  # truncated, not safetensors, no "metrics" tensor
        return None, f"does not load ({str(err).splitlines()[0] if str(err) else type(err)})"
    wrong = [k for k in meta if stored.get(k) != meta[k]]
    if wrong:
        found = ", ".join(f"{k} {stored.get(k)!r} instead of {meta[k]!r}" for k in wrong)
        return None, f"belongs to another run or example ({found})"
    if tuple(metrics.shape) != (int(meta["n_masks"]),):
        return None, f"holds {tuple(metrics.shape)} metrics instead of ({meta['n_masks']},)"
    return metrics, ""


def chunk_done(out: Path, example: int, chunk: int, meta: dict[str, str]) -> bool:
    """Whether a valid chunk exists; a damaged or foreign one is named, removed, and False.
    Called by the example's owner only."""
    path = chunk_path(out, example, chunk)
    _clear_stale(path)
    if not path.exists():
        return False
    metrics, why = _read_chunk(path, meta)
    if metrics is None:
        warnings.warn(f"{path} {why}: discarding it and computing it again", stacklevel=2)
        path.unlink(missing_ok=True)
    return metrics is not None


def rerun_hint(example: int, world: int) -> str:
    """What to run again to rewrite example ``example``'s files: the same command, on the
    shard that owns the example when several processes share the run."""
    if world <= 1:
        return "run the same command again to recompute it"
    rank = example % world
    return (f"run shard {rank} of {world} (torchrun rank / SLURM task {rank}) again with the "
            "same command to recompute it")  # fmt: skip


def load_chunk(
    out: Path, example: int, chunk: int, meta: dict[str, str], world: int = 1
) -> Tensor:
    """A chunk's metrics for the merge; a damaged or foreign one is removed and the run stops,
    naming it and the shard (of ``world``) to run again."""
    path = chunk_path(out, example, chunk)
    metrics, why = _read_chunk(path, meta)
    if metrics is None:
        path.unlink(missing_ok=True)
        raise RunError(f"{path} {why}: removed it; {rerun_hint(example, world)}")
    return metrics


def read_predictions(
    out: Path, rows: list[str], world: int = 1, timeout: float = 0.0
) -> list[dict]:
    """Every example's stored prediction, for the merge (rank 0 reads the other shards' too).

    Args:
        out: The run's folder.
        rows: Per example, the content key of its row (:func:`~lvlm_lens.run.fingerprint.row_key`;
            ``""`` skips the check).
        world: Processes sharing the run (names the shard to run again).
        timeout: Seconds to wait for files other processes still write.

    Raises:
        RunError: A file is damaged (it is removed) or was computed from another row than the
            example's now; the message names it and the shard to run again.
    """
    paths = [prediction_path(out, i) for i in range(len(rows))]
    wait_for_files(paths, timeout)
    infos = []
    for i, (path, row) in enumerate(zip(paths, rows, strict=True)):
        try:
            info = json.loads(path.read_text())
            why = "" if isinstance(info, dict) and "correct" in info else "is not a prediction file"
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            why = f"is damaged ({str(err).splitlines()[0]})"
        if why:
            path.unlink(missing_ok=True)
            raise RunError(f"{path} {why}: removed it; {rerun_hint(i, world)}")
        if row and info.get("row", row) != row:
            raise RunError(f"{path} was computed from another version of its data row; "
                           f"{rerun_hint(i, world)}")  # fmt: skip
        infos.append(info)
    return infos


def read_metrics(
    out: Path, kept: list[int], metas: dict[int, list[dict[str, str]]], world: int = 1,
    timeout: float = 0.0,
) -> Tensor:  # fmt: skip
    """The ``kept`` examples' chunks merged into ``[n_kept, n_masks]`` metrics, each chunk
    checked against its fingerprint in ``metas`` (see :func:`load_chunk`)."""
    wait_for_files([chunk_path(out, i, c) for i in kept for c in range(len(metas[i]))], timeout)
    return torch.stack([
        torch.cat([load_chunk(out, i, c, m, world) for c, m in enumerate(metas[i])])
        for i in kept
    ])  # fmt: skip


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
        """The tensors saved under ``key``, or ``None`` (a damaged file is named, removed and
        computed again)."""
        path = self.path(key)
        _clear_stale(path)
        if not path.exists():
            return None
        try:
            return dict(load_file(str(path)))
        except Exception as err:  # truncated or not safetensors
            warnings.warn(f"{path} is damaged ({err}): computing it again", stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, tensors: dict[str, Tensor]) -> None:
        """Write ``tensors`` under ``key``, atomically."""
        atomic_save(tensors, self.path(key))
