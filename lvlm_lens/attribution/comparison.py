"""Compare head attribution with the baseline rankings on faithfulness and completeness."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import fields

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lvlm_lens.attribution.curves import (
    Curves,
    RandomBand,
    band_of,
    curves_given_endpoints,
    default_ks,
    endpoints,
    random_rankings,
)
from lvlm_lens.attribution.head_attribution import build_engine
from lvlm_lens.attribution.rankings import (
    attention_weight,
    attribution_patching,
    single_head_ablation,
)
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.files import Checkpoints, cached
from lvlm_lens.interventions.ablation import BaselineKV, HeadAblation
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.progress import show_progress

HEAD_ATTRIBUTION = "head attribution"


def pooled_runner(engines: list[AblationEngine]) -> Callable[[Tensor], Tensor]:
    """``run_masks`` for the curves: the metric averaged over examples."""

    def run(masks: Bool[Tensor, "n n_layers n_heads"]) -> Float[Tensor, " n"]:
        return torch.stack([e.run(masks.cpu(), progress=False)[0] for e in engines]).mean(0)

    return run


def _curves_tensors(c: Curves) -> dict[str, Tensor]:
    return {f.name: torch.as_tensor(getattr(c, f.name)) for f in fields(Curves)}


def _curves_of(t: dict[str, Tensor]) -> Curves:
    return Curves(**{f.name: t[f.name] if t[f.name].ndim else float(t[f.name])
                     for f in fields(Curves)})


def example_rankings(
    model: HookedLVLM,
    inputs: list[LVLMInput],
    baselines: list[BaselineKV],
    engines: list[AblationEngine],
    config: HeadAblation,
    metric: str,
    checkpoints: Checkpoints | None = None,
    keys: list[str] | None = None,
) -> dict[str, Tensor]:
    """Single-head ablation, attention weight and attribution patching of every example
    (each example's ranking kept in ``checkpoints`` under its key, and read from there).

    Returns:
        Name -> ``[n_examples, n_layers, n_heads]`` importance (larger = more important).
    """
    keys = keys or [str(i) for i in range(len(inputs))]
    make = {
        "single-head ablation": lambda i: single_head_ablation(engines[i], progress=False),
        "attention weight": lambda i: attention_weight(model, inputs[i], config.source),
        "attribution patching": lambda i: attribution_patching(
            model, inputs[i], baselines[i], config.scope, metric
        ),
    }
    return {
        name: torch.cat([
            cached(checkpoints, f"{name}/{k}", lambda i=i, fn=fn: {"scores": fn(i)})["scores"]
            for i, k in enumerate(keys)
        ])
        for name, fn in make.items()
    }


def baseline_rankings(
    model: HookedLVLM,
    inputs: list[LVLMInput],
    baselines: list[BaselineKV],
    engines: list[AblationEngine],
    config: HeadAblation,
    metric: str,
    checkpoints: Checkpoints | None = None,
    keys: list[str] | None = None,
) -> dict[str, Tensor]:
    """Single-head ablation, attention weight and attribution patching, averaged over examples."""
    per_example = example_rankings(model, inputs, baselines, engines, config, metric,
                                   checkpoints, keys)
    return {name: r.mean(0) for name, r in per_example.items()}


def compare_rankings(
    model: HookedLVLM,
    result: AttributionResult,
    inputs: list[LVLMInput],
    baselines: list[BaselineKV],
    config: HeadAblation,
    metric: str,
    *,
    n_random: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    engines: list[AblationEngine | None] | None = None,
    checkpoints: Checkpoints | None = None,
    keys: list[str] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Tensor], dict[str, Curves], RandomBand]:
    """Rankings (larger = more important) and their curves on ``inputs``, with a random band.

    Args:
        engines: Engines already built for ``inputs`` (their prefix caches are reused); a
            missing one (``None``) is built by :func:`build_engine` from ``config``,
            ``metric`` and ``batch_size``.
        checkpoints: Where each finished piece (one example's ranking, the endpoints, one
            ranking's curves, one random ranking's curves) is kept; pieces found there are not
            recomputed.
        keys: An identifier per input for its checkpoints (default: its position).
        progress: ``False`` hides every progress bar.
    """
    engines = engines or [None] * len(inputs)
    engines = [
        e or build_engine(model, i, b, config, metric, batch_size)
        for e, i, b in zip(engines, inputs, baselines, strict=True)
    ]
    keys = keys or [str(i) for i in range(len(inputs))]
    attribution = (
        result.pooled_importance
        if result.pooled_importance is not None
        else result.importance.mean(0)
    )
    rankings = {HEAD_ATTRIBUTION: attribution.float()}
    rankings.update(baseline_rankings(model, inputs, baselines, engines, config, metric,
                                      checkpoints, keys))
    run = pooled_runner(engines)
    cfg = model.cfg
    ks = default_ks(cfg.n_layers * cfg.n_heads)
    pool = f"{len(keys)}-{zlib.crc32(' '.join(keys).encode()):08x}"  # the pooled examples

    def curves_of(name: str, ranking: Tensor) -> Curves:  # keyed by the ranking's values too
        key = f"curves/{name}/{pool}-{zlib.crc32(ranking.float().cpu().numpy().tobytes()):08x}"
        return _curves_of(cached(checkpoints, key, lambda: _curves_tensors(
            curves_given_endpoints(run, ranking, ks, clean, ablated, batch_size))))

    with show_progress(progress):
        ends = cached(checkpoints, f"endpoints/{pool}", lambda: dict(zip(
            ("clean", "ablated"), map(torch.tensor, endpoints(run, cfg.n_layers, cfg.n_heads,
                                                              batch_size)), strict=True)))
        clean, ablated = float(ends["clean"]), float(ends["ablated"])
        curves = {name: curves_of(name, r) for name, r in rankings.items()}
        randoms = random_rankings(cfg.n_layers, cfg.n_heads, n_random, seed)
        band = band_of([curves_of(f"random {j}", r) for j, r in enumerate(randoms)])
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
