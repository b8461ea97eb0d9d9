"""The fit's memory bound (``fit_memory``, what the mask-count check budgets) against the
peak a fit really reaches, measured in a fresh process (issue 23 item 4).

tracemalloc cannot see torch's CPU allocator, so the peak is the process's high-water RSS
(``ru_maxrss``) across the fit, after a warm-up fit of the same method has loaded its
libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lvlm_lens.attribution.regression import fit_memory

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import json, resource, sys, torch
from lvlm_lens.attribution.regression import fit_pooled, sample_masks
n, layers, heads, n_ex, method = json.loads(sys.argv[1])
masks = sample_masks(n, layers, heads, rate=0.3)
ys = [torch.randn(n, dtype=torch.float64) for _ in range(n_ex)]
fit_pooled([masks[:300]] * 2, [ys[0][:300]] * 2, method)  # warm-up: libraries, workspaces
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fit_pooled([masks] * n_ex, ys, method) if n_ex > 1 else fit_pooled([masks], ys, method)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * (1 if sys.platform == "darwin" else 1024))
"""


@pytest.mark.parametrize(
    "n,layers,heads,n_ex,method",
    [(1000, 16, 16, 5, "ridge"), (1000, 16, 16, 5, "lasso"), (1000, 16, 16, 5, "ols"),
     (3000, 16, 16, 1, "ridge")],  # fmt: skip
)
def test_the_budget_covers_the_measured_peak_within_2x(n, layers, heads, n_ex, method):
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    args = json.dumps([n, layers, heads, n_ex, method])
    out = subprocess.run([sys.executable, "-c", SCRIPT, args], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)  # fmt: skip
    peak = int(out.stdout.split()[-1])
    budget = fit_memory(n, layers * heads, n_ex, method)
    assert peak <= budget <= 2 * peak, (peak, budget)
