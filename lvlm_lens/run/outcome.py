"""The typed hand-offs of ``lvlm-lens attribute``: each example as it flows from the masked
runs to the comparison and the report (:class:`AttributedExample`), what the masked runs give
the job (:class:`AttributionRun`) and what the whole run gives the report (:class:`RunOutcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtyping import Bool, Float
from torch import Tensor

from lvlm_lens.attribution.curves import Curves, RandomBand
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.viz.figures import ExampleView
from lvlm_lens.viz.report import ReportData

if TYPE_CHECKING:  # the runner builds the cache and imports this module
    from lvlm_lens.run.runner import BaselineCache


@dataclass(frozen=True)
class AttributedExample:
    """One example of a run, built once from its prediction and passed along to the
    comparison, the summary and the report.

    Attributes:
        index: Position of the example in the run's dataset.
        id: The record's id.
        prompt: The record's prompt.
        answer: The record's expected answer.
        answer_id: The scored token of the answer.
        prediction_id: The model's greedy answer token.
        prediction: That token's text.
        correct: ``prediction_id == answer_id``.
        row: The content key of the record's row
            (:func:`~lvlm_lens.run.fingerprint.row_key`): its files carry it.
        record: The dataset record (image, mask, ...).
        importance: ``[n_layers, n_heads]`` head importance (``-β``) of the example in the
            run's attribution; ``None`` for an example not attributed.
        pearson_r: Held-out Pearson r of the example's fit; ``None`` if not attributed.
    """

    index: int
    id: str
    prompt: str
    answer: str
    answer_id: int
    prediction_id: int
    prediction: str
    correct: bool
    row: str
    record: Any = field(default=None, repr=False, compare=False)
    importance: Float[Tensor, "n_layers n_heads"] | None = field(default=None, repr=False,
                                                                 compare=False)
    pearson_r: float | None = field(default=None, compare=False)

    @property
    def attributed(self) -> bool:
        """Whether the example is part of the run's attribution."""
        return self.importance is not None

    @classmethod
    def predicted(cls, index: int, record: Any, answer_id: int, prediction_id: int,
                  prediction: str, row: str) -> AttributedExample:  # fmt: skip
        """A newly predicted example (not attributed yet)."""
        return cls(index, record.id, record.prompt, record.answer, answer_id, prediction_id,
                   prediction, prediction_id == answer_id, row, record)  # fmt: skip

    @classmethod
    def from_json(cls, info: dict[str, Any], record: Any, row: str) -> AttributedExample:
        """The example of a stored prediction (:meth:`to_json`) of ``record``, whose row key
        is ``row`` now (a stored file from before rows were recorded has none)."""
        return cls(info["index"], info["id"], record.prompt, info["answer"], info["answer_id"],
                   info["prediction_id"], info["prediction"], info["correct"], row, record)

    def to_json(self) -> dict[str, Any]:
        """The stored prediction (``examples/NNNNN.json``): its keys in the file's order."""
        return {
            "index": self.index,
            "id": self.id,
            "answer": self.answer,
            "answer_id": self.answer_id,
            "prediction_id": self.prediction_id,
            "prediction": self.prediction,
            "correct": self.correct,
            "row": self.row,
        }

    def with_attribution(self, result: AttributionResult, k: int) -> AttributedExample:
        """This example as row ``k`` of ``result``."""
        return replace(self, importance=result.importance[k], pearson_r=float(result.pearson_r[k]))


def attributed_examples(
    records: list[Any], infos: list[dict[str, Any]], rows: list[str], kept: list[int],
    result: AttributionResult,
) -> list[AttributedExample]:  # fmt: skip
    """Every example of a run from its stored prediction, the ``kept`` ones (in order, the
    rows of ``result``) with their attribution."""
    examples = [AttributedExample.from_json(info, rec, row)
                for info, rec, row in zip(infos, records, rows, strict=True)]  # fmt: skip
    for k, i in enumerate(kept):
        examples[i] = examples[i].with_attribution(result, k)
    return examples


@dataclass
class AttributionRun:
    """What rank 0 of :func:`~lvlm_lens.run.runner.run_attribution` hands back.

    Attributes:
        out: The run's folder.
        result: The fitted head attribution of the kept examples.
        examples: Every example, in order; the attributed ones (correct, or all with
            ``keep_wrong``) carry their row of ``result``.
        metrics: The kept examples' masked-run metrics.
        masks: The random masks (``True`` = ablated).
        baselines: The baseline cache (:class:`~lvlm_lens.run.runner.BaselineCache`), reused
            by the comparison.
        engines: Engines of the first attributed examples, by example index (their prefix
            caches are reused by the comparison).
    """

    out: Path
    result: AttributionResult
    examples: list[AttributedExample]
    metrics: Float[Tensor, "n_kept n_masks"]
    masks: Bool[Tensor, "n_masks n_layers n_heads"]
    baselines: BaselineCache | None
    engines: dict[int, AblationEngine] = field(default_factory=dict)

    @property
    def attributed(self) -> list[AttributedExample]:
        """The attributed examples, in the order of ``result``'s rows."""
        return [e for e in self.examples if e.attributed]

    @property
    def kept(self) -> list[int]:
        """Indices of the attributed examples."""
        return [e.index for e in self.attributed]


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
