"""The regression fit's memory bound (``attribution.regression.fit_memory``, what the
mask-count check of ``lvlm-lens attribute`` budgets) against the peak a fit really reaches.

Each case runs in a fresh process with one thread: a warm-up fit of the same method (libraries,
workspaces), then the measured fit; the peak is the growth of the process's high-water RSS
(``ru_maxrss``; tracemalloc cannot see torch's CPU allocator). Prints, per case, the measured
peak, the budget and their ratio (the budget must be >= 1x the peak to refuse before an
out-of-memory, and should stay under ~2x not to refuse counts that fit). Allocator-dependent,
so it is a benchmark, not a test (the count that fits for a given budget has a known-answer test
in tests/run/test_preflight.py). Results: ``docs/benchmarks.md``.
Run: ``python benchmarks/fit_memory.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lvlm_lens.attribution.regression import fit_memory

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, resource, sys, torch
from lvlm_lens.attribution.regression import fit_pooled, sample_masks
n, layers, heads, n_ex, method = json.loads(sys.argv[1])
masks = sample_masks(n, layers, heads, rate=0.3)
ys = [torch.randn(n, dtype=torch.float64) for _ in range(n_ex)]
fit_pooled([masks[:300]] * 2, [ys[0][:300]] * 2, method)  # warm-up: libraries, workspaces
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fit_pooled([masks] * n_ex, ys, method)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * (1 if sys.platform == "darwin" else 1024))
"""
#: (masks, layers, heads, examples, method)
CASES = [(1000, 16, 16, 5, "ridge"), (1000, 16, 16, 5, "lasso"), (1000, 16, 16, 5, "ols"),
         (3000, 16, 16, 1, "ridge"), (2000, 32, 32, 10, "ridge")]  # fmt: skip


def measured_peak(n: int, layers: int, heads: int, n_ex: int, method: str) -> int:
    """Bytes the fit adds to the high-water RSS of a fresh one-thread process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    case = json.dumps([n, layers, heads, n_ex, method])
    out = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)  # fmt: skip
    return int(out.stdout.split()[-1])


def main() -> None:
    """Print measured peak, budget and ratio per case."""
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print(f"{'masks':>6} {'heads':>6} {'examples':>8} {'method':>6} {'peak MiB':>9} "
          f"{'budget MiB':>10} {'budget/peak':>11}")  # fmt: skip
    for n, layers, heads, n_ex, method in CASES:
        peak = measured_peak(n, layers, heads, n_ex, method)
        budget = fit_memory(n, layers * heads, n_ex, method)
        print(f"{n:>6} {layers * heads:>6} {n_ex:>8} {method:>6} {peak / 2**20:>9.1f} "
              f"{budget / 2**20:>10.1f} {budget / peak:>10.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
