"""The regression fits' memory bounds against the peak a fit really reaches: the one-shot fit
(``fit_pooled``, bound ``attribution.regression.fit_memory``) and the chunked fit a run makes
(``fit_each`` then ``fit_pooled_chunked`` over a ``MaskSource``, bound
``attribution.chunked_fit.chunked_fit_memory``, what the mask-count check of
``lvlm-lens attribute`` budgets with the masks and metrics).

Each case runs in a fresh process with one thread: a warm-up fit of the same kind and method
(libraries, workspaces; the chunked fit's on 2x2 heads, since its peak is mostly heads x heads
matrices that a full-size warm-up would already have touched), then the measured fit; the peak
is the growth of the process's high-water RSS (``ru_maxrss``; tracemalloc cannot see torch's
CPU allocator). Prints, per case, the measured peak, the bound and their ratio (the bound must
be >= 1x the peak to refuse before an out-of-memory, and should stay under ~2x not to refuse
counts that fit). Allocator-dependent, so it is a benchmark, not a test (the count that fits
for a given budget has a known-answer test in tests/run/test_preflight.py). Results:
``docs/benchmarks.md``. Run: ``python benchmarks/fit_memory.py [one-shot|chunked]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lvlm_lens.attribution.chunked_fit import chunked_fit_memory
from lvlm_lens.attribution.regression import fit_memory

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, resource, sys, torch
from lvlm_lens.attribution.chunked_fit import fit_each, fit_pooled_chunked
from lvlm_lens.attribution.mask_source import MaskSource
from lvlm_lens.attribution.regression import fit_pooled, sample_masks
n, layers, heads, n_ex, method, kind = json.loads(sys.argv[1])
ys = torch.randn(n_ex, n, dtype=torch.float64)
if kind == "one-shot":
    masks = sample_masks(n, layers, heads, rate=0.3)
    fit_pooled([masks[:300]] * 2, [ys[0][:300]] * 2, method)  # warm-up: libraries, workspaces
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fit_pooled([masks] * n_ex, list(ys), method)
else:
    warm = MaskSource(400, 2, 2, rate=0.3)  # tiny heads: libraries loaded, no p x p touched
    fit_each(warm, ys[:2, :400], method), fit_pooled_chunked(warm, ys[:2, :400], method)
    src = MaskSource(n, layers, heads, rate=0.3)  # drawn chunk by chunk, never whole
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fit_each(src, ys, method), fit_pooled_chunked(src, ys, method)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * (1 if sys.platform == "darwin" else 1024))
"""
#: (masks, layers, heads, examples, method, fit)
CASES = [
    (1000, 16, 16, 5, "ridge", "one-shot"), (1000, 16, 16, 5, "lasso", "one-shot"),
    (1000, 16, 16, 5, "ols", "one-shot"), (3000, 16, 16, 5, "lasso", "one-shot"),
    (3000, 16, 16, 1, "ridge", "one-shot"), (2000, 32, 32, 10, "ridge", "one-shot"),
    (1000, 16, 16, 5, "ridge", "chunked"), (1000, 16, 16, 5, "lasso", "chunked"),
    (1000, 16, 16, 5, "ols", "chunked"), (3000, 16, 16, 5, "lasso", "chunked"),
    (2000, 32, 32, 10, "ridge", "chunked"), (20000, 32, 32, 10, "ridge", "chunked"),
    (50000, 4, 4, 40, "ridge", "chunked"),  # many rows, few heads: the per-row vectors
]  # fmt: skip
BOUNDS = {"one-shot": fit_memory, "chunked": chunked_fit_memory}


def measured_peak(n: int, layers: int, heads: int, n_ex: int, method: str, kind: str) -> int:
    """Bytes the fit adds to the high-water RSS of a fresh one-thread process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    case = json.dumps([n, layers, heads, n_ex, method, kind])
    out = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)  # fmt: skip
    return int(out.stdout.split()[-1])


def main() -> None:
    """Print measured peak, bound and ratio per case."""
    only = set(sys.argv[1:])  # optional: fit kinds to run ("one-shot", "chunked")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print(f"{'masks':>6} {'heads':>6} {'examples':>8} {'method':>6} {'fit':>8} {'peak MiB':>9} "
          f"{'bound MiB':>9} {'bound/peak':>10}")  # fmt: skip
    for n, layers, heads, n_ex, method, kind in CASES:
        if only and kind not in only:
            continue
        peak = measured_peak(n, layers, heads, n_ex, method, kind)
        bound = BOUNDS[kind](n, layers * heads, n_ex, method)
        ratio = f"{bound / peak:>9.2f}x" if peak else f"{'-':>10}"
        print(f"{n:>6} {layers * heads:>6} {n_ex:>8} {method:>6} {kind:>8} {peak / 2**20:>9.1f} "
              f"{bound / 2**20:>9.1f} {ratio}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
