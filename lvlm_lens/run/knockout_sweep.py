"""``lvlm-lens knockout``: attention knockout between token groups in sliding layer windows
(Zhang et al., CVPR'25): the relative change of the answer probability when every edge from a
source group to a target group is blocked in the layers ``[l - w//2, l + w//2]``."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from lvlm_lens.interventions.sweeps import knockout_window_sweep  # noqa: E402
from lvlm_lens.run.examples import prepare_records  # noqa: E402
from lvlm_lens.run.job import load_model, load_records  # noqa: E402
from lvlm_lens.run.options import RunOptions  # noqa: E402

#: (source, target) token-group pairs swept by default.
PAIRS = (("image", "final"), ("image", "question"), ("question", "final"), ("image", "role"))


def run_knockout_sweep(opts: RunOptions, window: int = 9, metric: str = "prob") -> Path:
    """Sweep every pair over every window centre; writes CSV + PNG, returns the CSV path.

    Args:
        opts: Model, data and output folder (the attribution options are not used).
        window: Layers per knockout window (capped at the model's depth).
        metric: Answer metric whose change is reported (relative change for ``prob``).
    """
    model, (records, _) = load_model(opts), load_records(opts)
    inputs = prepare_records(model, records)
    with torch.no_grad():
        inputs = [i for i in inputs if int(model(i)[0, -1].argmax()) == int(i.answer_ids[0])]
    if not inputs:
        raise ValueError("the model answers no example correctly: nothing to knock out")
    n = model.cfg.n_layers
    window = min(window, n)
    rows = []
    for source, target in tqdm(PAIRS, desc="knockout"):
        effect = torch.cat(  # [window centre, example], one shared prefix per example
            [knockout_window_sweep(model, i, source, target, window, metric=metric,
                                   progress=False) for i in inputs], dim=1
        ).mean(1)
        rows += [(f"{source}->{target}", c, float(e)) for c, e in enumerate(effect)]
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "knockout.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("edges", "window_centre", f"mean_{metric}_change"), *rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for pair in dict.fromkeys(r[0] for r in rows):
        ax.plot(
            [r[1] for r in rows if r[0] == pair],
            [100 * r[2] for r in rows if r[0] == pair],
            marker="o",
            label=pair,
        )
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(
        xlabel=f"centre of the {window}-layer window",
        ylabel=f"{metric} change (%)",
        title=f"Attention knockout ({len(inputs)} correctly answered examples)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "knockout.png", dpi=120)
    plt.close(fig)
    return path
