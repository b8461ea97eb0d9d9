"""How many CPU threads torch uses in a run (``--threads``).

Torch's default intra-op pool has one thread per core, and every operation ends at a barrier
where each thread waits for the others. When other processes hold the cores, a thread of the
pool is often descheduled and the whole pool waits for it at every operation. A small model's
operations take microseconds, so it waits far longer than it computes: the bundled toy LVLM ran
the README's command 10-40x slower with two threads than with one on a busy 2-core machine
(docs/benchmarks.md). A larger model's operations are long enough for more threads to pay off,
as long as the cores are free.
"""

from __future__ import annotations

import os

import torch

#: Below this many parameters a model runs on one CPU thread unless ``--threads`` says
#: otherwise (measured: benchmarks/threads.py, docs/benchmarks.md).
SMALL_MODEL_PARAMS = 100_000_000


def free_cores() -> int:
    """Cores that other processes leave free: the core count less the 1-minute load average
    (less this process's own share of it), at least 1."""
    cores = os.cpu_count() or 1
    try:
        others = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:  # no load average on this platform
        return cores
    return max(1, min(cores, round(cores - others)))


def choose_threads(model: torch.nn.Module, requested: int | None = None) -> int:
    """The intra-op thread count for ``model``.

    ``requested`` if given. Otherwise, for a model on the CPU: 1 below
    :data:`SMALL_MODEL_PARAMS` parameters, else torch's current setting (its default: one per
    core, or ``OMP_NUM_THREADS``) capped at :func:`free_cores`. A model on a GPU keeps torch's
    setting.
    """
    if requested is not None:
        return requested
    current = torch.get_num_threads()
    if next(model.parameters()).device.type != "cpu":
        return current
    if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        return 1
    return min(current, free_cores())


def apply_threads(model: torch.nn.Module, requested: int | None = None) -> int:
    """Set torch's intra-op threads as :func:`choose_threads` says; returns the count."""
    n = choose_threads(model, requested)
    torch.set_num_threads(n)
    return n
