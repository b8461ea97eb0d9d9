"""Compare head attribution with the baseline rankings on faithfulness and completeness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lvlm_lens.attribution.curves import (
    Curves,
    RandomBand,
    default_ks,
    evaluate_ranking,
    random_band,
)
from lvlm_lens.attribution.rankings import (
    attention_weight,
    attribution_patching,
    single_head_ablation,
)
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.interventions.ablation import BaselineKV, HeadAblation
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.progress import show_progress

HEAD_ATTRIBUTION = "head attribution"


def pooled_runner(engines: list[AblationEngine]) -> Callable[[Tensor], Tensor]:
    """``run_masks`` for the curves: the metric averaged over examples."""

    def run(masks: Bool[Tensor, "n n_layers n_heads"]) -> Float[Tensor, " n"]:
        return torch.stack([e.run(masks.cpu(), progress=False)[0] for e in engines]).mean(0)

    return run


def example_rankings(
    model: Any,
    inputs: list[LVLMInput],
    baselines: list[BaselineKV],
    engines: list[AblationEngine],
    config: HeadAblation,
    metric: str,
) -> dict[str, Tensor]:
    """Single-head ablation, attention weight and attribution patching of every example.

    Returns:
        Name -> ``[n_examples, n_layers, n_heads]`` importance (larger = more important).
    """
    return {
        "single-head ablation": torch.cat(
            [single_head_ablation(e, progress=False) for e in engines]
        ),
        "attention weight": torch.cat([attention_weight(model, i, config.source) for i in inputs]),
        "attribution patching": torch.cat(
            [
                attribution_patching(model, i, b, config.scope, metric)
                for i, b in zip(inputs, baselines, strict=True)
            ]
        ),
    }


def baseline_rankings(
    model: Any,
    inputs: list[LVLMInput],
    baselines: list[BaselineKV],
    engines: list[AblationEngine],
    config: HeadAblation,
    metric: str,
) -> dict[str, Tensor]:
    """Single-head ablation, attention weight and attribution patching, averaged over examples."""
    per_example = example_rankings(model, inputs, baselines, engines, config, metric)
    return {name: r.mean(0) for name, r in per_example.items()}


def compare_rankings(
    model: Any,
    result: AttributionResult,
    inputs: list[LVLMInput],
    baselines: list[BaselineKV],
    config: HeadAblation,
    metric: str,
    *,
    n_random: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[dict[str, Tensor], dict[str, Curves], RandomBand]:
    """Rankings (larger = more important) and their curves on ``inputs``, with a random band
    (``progress=False`` hides every progress bar)."""
    engines = [
        AblationEngine(model, i, b, config, metric, batch_size)
        for i, b in zip(inputs, baselines, strict=True)
    ]
    attribution = (
        result.pooled_importance
        if result.pooled_importance is not None
        else result.importance.mean(0)
    )
    rankings = {HEAD_ATTRIBUTION: attribution.float()}
    rankings.update(baseline_rankings(model, inputs, baselines, engines, config, metric))
    run = pooled_runner(engines)
    ks = default_ks(model.cfg.n_layers * model.cfg.n_heads)
    with show_progress(progress):
        curves = {name: evaluate_ranking(run, r, ks, batch_size) for name, r in rankings.items()}
        band = random_band(
            run, model.cfg.n_layers, model.cfg.n_heads, ks, n_random, seed, batch_size=batch_size
        )
    return rankings, curves, band


def early_mean(curves: Curves, curve: str, fraction: float, n_heads: int) -> float:
    """Mean of a curve over ``0 < k <= fraction * n_heads`` (area under the early curve)."""
    keep = (curves.ks > 0) & (curves.ks <= max(1, int(fraction * n_heads)))
    return float(getattr(curves, curve)[keep].nanmean())


def comparison_notes(
    curves: dict[str, Curves], band: RandomBand, n_heads: int, fraction: float = 0.1
) -> list[str]:
    """Plain-language outcome of the comparison, whichever way it comes out."""
    notes = []
    for curve in ("completeness", "faithfulness"):
        scores = {n: early_mean(c, curve, fraction, n_heads) for n, c in curves.items()}
        best = max(scores, key=lambda n: scores[n])
        text = ", ".join(f"{n} {v:.3f}" for n, v in sorted(scores.items(), key=lambda x: -x[1]))
        verdict = (
            "head attribution is best"
            if best == HEAD_ATTRIBUTION
            else f"head attribution does NOT win here ({best} does): the paper's claim is not "
            "reproduced on this model and data"
        )
        notes.append(
            f"Mean {curve} over the top-k heads for k <= {fraction:.0%} of heads: {text}. "
            f"{verdict}."
        )
    ha = curves[HEAD_ATTRIBUTION]
    median = band.completeness[band.quantiles.index(0.5)] if 0.5 in band.quantiles else None
    if median is not None:
        keep = (ha.ks > 0) & (ha.ks <= max(1, int(fraction * n_heads)))
        beats = bool((ha.completeness[keep] > median[keep]).all())
        notes.append(
            f"Head attribution {'beats' if beats else 'does not beat'} the median random "
            f"ranking on completeness at every k <= {fraction:.0%} of heads."
        )
    return notes
