"""Head attribution (Kim et al. 2025, Fig. 1B): random head-ablation masks -> linear model.

Sample Bernoulli(``rate``) masks over all ``n_layers x n_heads`` query heads, run every mask
through the fast engine, record the metric, and fit ``z(m) = b0 + sum_h b_h m_h`` per example
and pooled over examples. ``True`` in a mask means the head is ablated, so the heads that
carry image information to the answer have the most negative coefficients.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from lvlm_lens.attribution.chunked_fit import fit_each, fit_pooled_chunked
from lvlm_lens.attribution.mask_source import MaskSource
from lvlm_lens.attribution.regression import (
    check_method,
    check_n_masks,
    fit_linear,
    fit_pooled,
    sample_masks,
)
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.errors import OptionError
from lvlm_lens.interventions.ablation import BaselineKV, HeadAblation, compute_baseline
from lvlm_lens.interventions.engine import AblationEngine, Metric
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.progress import show_progress


@dataclass
class AttributionConfig:
    """Options of a head-attribution run (defaults follow COAR where the paper is silent).

    Attributes:
        n_masks: Random masks per example (shared by all examples).
        rate: Probability that a head is ablated in a mask (COAR: 5 %).
        seed: Seed of the masks and of the train/held-out split.
        metric: Metric of the answer token (``logit``, ``logit_diff``, ``logprob``, ``prob``).
        method: Regressor: ``ridge`` (penalty chosen on held-out masks), ``ols`` or ``lasso``.
        holdout: Share of masks kept out of the fit to report Pearson r and R².
        batch_size: Masks per forward pass of the engine.
        ablation: What ablating a head means (baseline, scope, source group).
    """

    n_masks: int = 1000
    rate: float = 0.05
    seed: int = 0
    metric: str = "logit"
    method: str = "ridge"
    holdout: float = 0.2
    batch_size: int = 64
    ablation: HeadAblation = field(default_factory=HeadAblation)

    def __post_init__(self) -> None:
        if not 0 < self.rate < 1:
            raise OptionError("rate", f"must lie in (0, 1), got {self.rate}")
        check_method(self.method)
        if not 0 <= self.holdout < 1:
            raise OptionError("holdout", f"must lie in [0, 1), got {self.holdout}")
        if self.seed < 0:
            raise OptionError("seed", f"must be >= 0, got {self.seed}")
        if self.batch_size < 1:
            raise OptionError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.method != "ols":  # OLS also depends on the model's heads: check_config
            check_n_masks(self.n_masks, self.method, self.holdout)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (for result files and resume checks)."""
        return dataclasses.asdict(self)


def check_config(model: HookedLVLM, config: AttributionConfig) -> None:
    """Refuse settings the regression cannot fit, before any forward pass runs."""
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    check_n_masks(config.n_masks, config.method, config.holdout, n_heads)


def build_engine(
    model: HookedLVLM, inp: LVLMInput, baseline: BaselineKV, ablation: HeadAblation,
    metric: str | Metric = "logit", batch_size: int = 64,
) -> AblationEngine:
    """The one way an example's engine is built (the masked runs, the comparison, the
    baseline check and the claims runner share it), from the three settings it needs: what
    ablating a head means, the metric and the masks per forward pass (an
    :class:`AttributionConfig`'s ``ablation``, ``metric`` and ``batch_size``)."""
    return AblationEngine(model, inp, baseline, ablation, metric, batch_size)


def head_attribution(
    model: HookedLVLM,
    inp: LVLMInput,
    config: AttributionConfig | None = None,
    *,
    baseline: BaselineKV | None = None,
    baseline_image: Any = None,
    reference_images: list[Any] | None = None,
    metric: Metric | None = None,
    progress: bool = True,
) -> AttributionResult:
    """Run head attribution on every example of ``inp``.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        inp: Examples; the answer is ``inp.answer_ids`` or the model's own clean answer.
        config: Options (defaults: :class:`AttributionConfig`).
        baseline: Precomputed baseline keys/values; else computed from the options below.
        baseline_image: Image for ``baseline="image"``.
        reference_images: Images for ``baseline="mean"``.
        metric: A custom ``f(logits, answer_ids) -> [batch]`` instead of ``config.metric``.
        progress: Show progress bars (``False`` hides every bar of the call).

    Returns:
        Per-example and pooled coefficients with held-out fit quality, masks and metrics.
    """
    config = config or AttributionConfig()
    check_config(model, config)
    with show_progress(progress):
        if baseline is None:
            baseline = compute_baseline(model, inp, config.ablation, baseline_image=baseline_image,
                                        reference_images=reference_images)
        engine = build_engine(model, inp, baseline, config.ablation, metric or config.metric,
                              config.batch_size)
        masks = sample_masks(config.n_masks, model.cfg.n_layers, model.cfg.n_heads, config.rate,
                             config.seed)
        metrics = engine.run(masks)
        return fit_result(masks, metrics, config, model_name=model.cfg.model_name,
                          layer_kinds=model.attn_kinds())


def fit_result(masks: torch.Tensor | MaskSource, metrics: torch.Tensor, config: AttributionConfig,
               model_name: str = "", example_ids: list[str] | None = None,
               layer_kinds: list[str] | None = None) -> AttributionResult:
    """Fit per-example and pooled linear models to masked-run metrics ``[n_examples, n_masks]``
    (``layer_kinds``: each layer's head kind, ``model.attn_kinds()``).

    Masks given whole are fitted by :func:`~lvlm_lens.attribution.regression.fit_linear` /
    ``fit_pooled``; a :class:`~lvlm_lens.attribution.mask_source.MaskSource` by their chunked
    equivalents (:mod:`~lvlm_lens.attribution.chunked_fit`), which never hold more than a chunk
    of the masks in float64 (the result keeps the bool masks).
    """
    kw = dict(method=config.method, holdout=config.holdout, seed=config.seed)
    if isinstance(masks, MaskSource):
        fits = fit_each(masks, metrics, **kw)
        pooled = fit_pooled_chunked(masks, metrics, **kw) if len(metrics) > 1 else None
        masks = masks.all()
    else:
        fits = [fit_linear(masks, m, **kw) for m in metrics]
        pooled = fit_pooled([masks] * len(metrics), list(metrics), **kw) if len(metrics) > 1 \
            else None  # fmt: skip
    return AttributionResult.from_fits(
        fits, pooled, options=config.to_dict(), model_name=model_name, example_ids=example_ids,
        masks=masks, metrics=metrics, layer_kinds=layer_kinds,
    )
