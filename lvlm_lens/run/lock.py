"""One run per output folder: a lock file created exclusively, holding the owner's pid.

Only rank 0 of a run takes it (the other processes of a sharded run share the folder by
design). A lock whose process is gone (killed) is stale and taken over.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from lvlm_lens.errors import RunError

LOCK_NAME = ".lvlm-lens.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def acquire_lock(out: Path) -> None:
    """Take ``out``'s lock for this process (again: a no-op); released at exit.

    Raises:
        RunError: Another live process holds it.
    """
    path = Path(out) / LOCK_NAME
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0  # unreadable or half-written: stale
            if pid == os.getpid():
                return
            if pid > 0 and _alive(pid):
                raise RunError(
                    f"--out {out} is in use by another run (pid {pid}): wait for it to finish, "
                    f"or pass another --out (if no such run exists, remove {path})"
                ) from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        atexit.register(release_lock, out)
        return
    raise RunError(f"--out {out}: could not take its lock {path}: run the command again")


def release_lock(out: Path) -> None:
    """Remove ``out``'s lock if this process holds it."""
    path = Path(out) / LOCK_NAME
    try:
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
