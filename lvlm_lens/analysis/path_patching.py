"""Path patching from the image tokens through chosen heads to the final token.

In the corrupted run, only the chosen heads, and only at the receiver queries (default: the
final token), read the *clean* image's keys and values at the image positions; everything else
stays corrupted. The share of the clean metric this restores is the part of the image's effect
that travels image -> those heads -> the final token directly. It reuses the head-ablation
hooks with the clean run's keys/values as the "baseline".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from lvlm_lens.analysis.circuits import metric_fn
from lvlm_lens.analysis.stats import bootstrap_ratio
from lvlm_lens.interventions.ablation import BaselineKV, head_ablation_hooks, kv_of, source_mask
from lvlm_lens.interventions.metrics import final_logits
from lvlm_lens.interventions.patching import check_pair
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.viz.plots import bar_plot


@dataclass
class PathPatchingResult:
    """Share of the clean metric restored through each path.

    Attributes:
        frame: One row per (path, example): ``delta`` (patched minus corrupted metric),
            ``total`` (clean minus corrupted), ``restored``.
        clean: Clean metric per example.
        corrupted: Corrupted metric per example.
    """

    frame: pd.DataFrame
    clean: np.ndarray
    corrupted: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """The tidy per-example table."""
        return self.frame

    def summary(self, seed: int = 0) -> pd.DataFrame:
        """Per path: restored share (ratio of sums over examples) with a bootstrap 95 % CI."""
        wide = self.frame.pivot_table(index="path", columns="example", values="delta",
                                      sort=False)
        value, low, high = bootstrap_ratio(wide.to_numpy(), self.clean - self.corrupted,
                                           seed=seed)
        return pd.DataFrame({"path": wide.index, "mean": value, "low": low, "high": high})

    def plot(self) -> Any:
        """Bars of the restored share per path with 95 % CIs."""
        return bar_plot(self.summary(), "path", ylabel="share of clean metric restored",
                        title="path patching: image \u2192 heads \u2192 receivers")


def _label(heads: Sequence[tuple[int, int]]) -> str:
    return " + ".join(f"L{layer}H{head}" for layer, head in heads)


@torch.no_grad()
def path_patching(
    model: HookedLVLM,
    clean: LVLMInput,
    corrupted: LVLMInput,
    heads: Sequence[tuple[int, int]],
    *,
    receivers: str = "final",
    each: bool = True,
    metric: Any = "logit_diff",
) -> PathPatchingResult:
    """Restore the path image -> ``heads`` -> ``receivers`` in the corrupted run.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        clean: The clean input.
        corrupted: The same prompt with another image (same shape, same image positions).
        heads: The chosen ``(layer, head)`` pairs.
        receivers: Token group whose queries read the clean image (``final``), or ``text``
            for every query after the image.
        each: Also patch each chosen head on its own, and every head together (reference).
        metric: As in :class:`~lvlm_lens.analysis.circuits.PatchingConfig`.
    """
    check_pair(clean, corrupted)
    if not heads:
        raise ValueError("path patching needs at least one (layer, head)")
    fn = metric_fn(model, clean, corrupted, metric)
    m_clean = fn(final_logits(model(clean))).float().cpu()
    m_corr = fn(final_logits(model(corrupted))).float().cpu()
    src = source_mask(corrupted, "image")
    if not torch.equal(src, source_mask(clean, "image")):
        raise ValueError("clean and corrupted inputs must have their image tokens at the same "
                         "positions")
    keys, values = kv_of(model, clean)
    kv = BaselineKV(keys, values, src)
    if receivers not in corrupted.groups:
        raise KeyError(f"unknown receiver group {receivers!r}; known: {sorted(corrupted.groups)}")
    queries = corrupted.groups[receivers].bool() & ~src
    cfg = model.cfg
    paths = {_label(heads): list(heads)}
    if each and len(heads) > 1:
        paths |= {_label([h]): [h] for h in heads}
    if each:
        paths["all heads"] = [(a, b) for a in range(cfg.n_layers) for b in range(cfg.n_heads)]
    total = (m_clean - m_corr).numpy()
    rows = []
    for name, chosen in paths.items():
        mask = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.bool)
        for layer, head in chosen:
            mask[layer, head] = True
        hooks = head_ablation_hooks(model, corrupted, mask, kv, queries=queries)
        patched = fn(final_logits(model.run_with_hooks(corrupted, fwd_hooks=hooks))).float().cpu()
        for i, d in enumerate((patched - m_corr).tolist()):
            rows.append({"path": name, "example": i, "delta": d, "total": float(total[i]),
                         "restored": d / total[i] if total[i] != 0 else np.nan})
    return PathPatchingResult(pd.DataFrame(rows), m_clean.numpy(), m_corr.numpy())
