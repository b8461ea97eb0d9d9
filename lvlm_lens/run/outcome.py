"""The typed hand-offs of ``lvlm-lens attribute``: what the masked runs give the job
(:class:`AttributionRun`) and what the whole run gives the report (:class:`RunOutcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtyping import Bool, Float
from torch import Tensor

from lvlm_lens.attribution.curves import Curves, RandomBand
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.viz.figures import ExampleView
from lvlm_lens.viz.report import ReportData


@dataclass
class AttributionRun:
    """What rank 0 of :func:`~lvlm_lens.run.runner.run_attribution` hands back.

    Attributes:
        out: The run's folder.
        result: The fitted head attribution of the kept examples.
        infos: Every example's stored prediction (the ``examples/*.json`` dicts), in order.
        kept: Indices of the attributed examples (correct, or all with ``keep_wrong``).
        metrics: The kept examples' masked-run metrics.
        masks: The random masks (``True`` = ablated).
        baselines: The baseline cache (:class:`~lvlm_lens.run.runner.BaselineCache`), reused
            by the comparison.
        engines: Engines of the first attributed examples, by example index (their prefix
            caches are reused by the comparison).
    """

    out: Path
    result: AttributionResult
    infos: list[dict[str, Any]]
    kept: list[int]
    metrics: Float[Tensor, "n_kept n_masks"]
    masks: Bool[Tensor, "n_masks n_layers n_heads"]
    baselines: Any
    engines: dict[int, AblationEngine] = field(default_factory=dict)


@dataclass
class RunOutcome:
    """The finished run, in memory: what the store writes and the report shows.

    Attributes:
        run: The attribution.
        summary: What ``summary.json`` records (without the notes).
        notes: Findings shown prominently in the report.
        rankings: Name -> ``[n_layers, n_heads]`` importance of each compared ranking.
        curves: Name -> faithfulness / completeness curves.
        band: The random rankings' band, if compared.
        views: The examples shown with their top heads' attention.
    """

    run: AttributionRun
    summary: dict[str, Any]
    notes: list[str]
    rankings: dict[str, Tensor] = field(default_factory=dict)
    curves: dict[str, Curves] = field(default_factory=dict)
    band: RandomBand | None = None
    views: list[ExampleView] = field(default_factory=list)

    def report_data(self) -> ReportData:
        """What the report shows, as ``lvlm-lens report`` reads it back from the files."""
        summary = self.summary | {"notes": self.notes}  # as summary.json holds it
        return ReportData(self.run.result, self.rankings, self.curves, self.band, self.views,
                          summary, list(self.notes))  # fmt: skip
