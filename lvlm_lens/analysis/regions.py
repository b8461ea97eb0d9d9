"""Object, background and random image tokens, and image-token ablation at matched counts.

Object masks in pixels (``Record.mask``) are projected onto each image's patch grid(s)
(:func:`~lvlm_lens.data.patch_grid_mask`, the high-res grid of any-resolution models included)
to give ``object`` and ``background`` token groups; ``random`` draws image tokens at the same
count as ``object``. :func:`region_ablation` then replaces each region's projected image
tokens by the mean image token (Neo et al., ICLR'25), with the background and random regions
subsampled to the object's token count so that the comparison is at matched counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor

from lvlm_lens.analysis.stats import bootstrap_ci
from lvlm_lens.data import patch_grid_mask
from lvlm_lens.interventions.engine import clean_answers
from lvlm_lens.interventions.metrics import answer_prob, final_logits
from lvlm_lens.interventions.token_ablation import (
    ImageBaseline,
    mean_image_baseline,
    token_ablation_hooks,
)
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.progress import progress_bar, show_progress
from lvlm_lens.viz.patches import image_grids
from lvlm_lens.viz.plots import bar_plot


def object_patches(inp: LVLMInput, masks: Sequence[Any], *, threshold: float = 0.25
                   ) -> Bool[Tensor, "batch pos"]:
    """Image tokens that cover the object, from one pixel mask per example.

    Args:
        inp: The batch (one image per example is used: the first).
        masks: ``[H, W]`` bool object mask per example (in the image's pixel frame), or None.
        threshold: Object fraction at or above which a patch counts as object.
    """
    if len(masks) != len(inp):
        raise ValueError(f"got {len(masks)} masks for {len(inp)} examples")
    out = torch.zeros(inp.shape, dtype=torch.bool)
    for i, mask in enumerate(masks):
        if mask is None:
            raise ValueError(f"example {i} has no object mask (Record.mask / data.csv mask or "
                             "bbox column): object vs background tokens need one")
        for grid in image_grids(inp, i, 0):
            obj = patch_grid_mask(mask, grid.positions.shape, threshold=threshold,
                                  center_crop=grid.crop).numpy()
            pos = grid.positions[obj & (grid.positions >= 0)]
            out[i, torch.as_tensor(pos, dtype=torch.long)] = True
    return out


def image_regions(
    inp: LVLMInput, masks: Sequence[Any], *, threshold: float = 0.25, seed: int = 0
) -> dict[str, Bool[Tensor, "batch pos"]]:
    """``object``, ``background`` (every other image token) and ``random`` (image tokens drawn
    at the object's count) token groups, usable wherever a token group is taken."""
    obj = object_patches(inp, masks, threshold=threshold)
    image = inp.groups["image"].bool().cpu()
    rng = np.random.default_rng(seed)
    rand = torch.zeros_like(image)
    for i in range(len(inp)):
        pos = image[i].nonzero().flatten().numpy()
        rand[i, rng.choice(pos, size=int(obj[i].sum()), replace=False)] = True
    return {"object": obj, "background": image & ~obj, "random": rand}


@dataclass
class RegionAblationResult:
    """Answer probability with object / background / random image tokens replaced.

    Attributes:
        frame: One row per (region, draw, example): ``n_tokens`` replaced, ``p_clean``,
            ``p_new``, ``change`` (relative change of the answer probability) and ``correct``
            (argmax still the answer).
        summary_: Not read by any method (``None`` unless the caller sets it).
    """

    frame: pd.DataFrame
    summary_: pd.DataFrame | None = field(default=None, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """The tidy per-example table."""
        return self.frame

    def summary(self, seed: int = 0) -> pd.DataFrame:
        """Per region: mean relative change with a bootstrap CI over examples, accuracy."""
        rows = []
        per_ex = self.frame.groupby(["region", "example"], sort=False)[
            ["change", "correct", "n_tokens"]].mean().reset_index()
        for region, part in per_ex.groupby("region", sort=False):
            est = bootstrap_ci(part["change"].to_numpy(), seed=seed)
            acc = bootstrap_ci(part["correct"].to_numpy(), seed=seed)
            rows.append({"region": region, "mean": est.value, "low": est.low, "high": est.high,
                         "accuracy": acc.value, "accuracy_low": acc.low,
                         "accuracy_high": acc.high, "tokens": part["n_tokens"].mean(),
                         "n": est.n})
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        """Bars of the mean relative change per region with 95 % CIs."""
        return bar_plot(self.summary(), "region", ylabel="relative change of p(answer)",
                        title="image-token ablation at matched counts")


@torch.no_grad()
def region_ablation(
    model: HookedLVLM,
    inp: LVLMInput,
    masks: Sequence[Any],
    *,
    baseline: Tensor | ImageBaseline | None = None,
    n_draws: int = 5,
    threshold: float = 0.25,
    seed: int = 0,
    progress: bool = True,
) -> RegionAblationResult:
    """Replace object, background or random image tokens by a baseline, at matched counts.

    Per example, ``object`` replaces every object token (``n`` of them); ``background``
    replaces ``n`` background tokens drawn at random (all of them if fewer); ``random``
    replaces ``n`` image tokens drawn at random; ``all background`` replaces every background
    token (unmatched, for reference). Random draws are repeated ``n_draws`` times.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        inp: The examples (answer = ``inp.answer_ids`` or the model's clean answer).
        masks: ``[H, W]`` object mask per example.
        baseline: ``[d_model]`` replacement token or an
            :class:`~lvlm_lens.interventions.ImageBaseline` (default: the mean image token of
            ``inp`` and, on Qwen3-VL, its mean DeepStack features).
        n_draws: Random draws of the matched background / random tokens.
        threshold: Object fraction of an object patch.
        seed: Seed of the draws.
        progress: Show a progress bar.
    """
    obj = object_patches(inp, masks, threshold=threshold)
    image = inp.groups["image"].bool().cpu()
    base = mean_image_baseline(model, inp, progress=False) if baseline is None else baseline
    answers = clean_answers(model, inp)
    clean = final_logits(model(inp))
    p_clean = answer_prob(clean, answers).cpu()
    rng = np.random.default_rng(seed)
    plans: list[tuple[str, int, Tensor]] = [("object", 0, obj), ("all background", 0, image & ~obj)]
    for d in range(n_draws):
        bg, rnd = torch.zeros_like(image), torch.zeros_like(image)
        for i in range(len(inp)):
            n = int(obj[i].sum())
            back = (image[i] & ~obj[i]).nonzero().flatten().numpy()
            bg[i, rng.choice(back, size=min(n, len(back)), replace=False)] = True
            rnd[i, rng.choice(image[i].nonzero().flatten().numpy(), size=n, replace=False)] = True
        plans += [("background", d, bg), ("random", d, rnd)]
    rows = []
    with show_progress(progress):
        for region, draw, which in progress_bar(plans, desc="region ablation"):
            hooks = token_ablation_hooks(model, inp, which, base)
            logits = final_logits(model.run_with_hooks(inp, fwd_hooks=hooks))
            p_new = answer_prob(logits, answers).cpu()
            correct = (logits.argmax(-1) == answers).cpu()
            for i in range(len(inp)):
                rows.append({"region": region, "draw": draw, "example": i,
                             "n_tokens": int(which[i].sum()), "p_clean": float(p_clean[i]),
                             "p_new": float(p_new[i]),
                             "change": float((p_new[i] - p_clean[i]) / p_clean[i]),
                             "correct": float(correct[i])})
    return RegionAblationResult(pd.DataFrame(rows))
