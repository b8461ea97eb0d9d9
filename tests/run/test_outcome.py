"""The typed hand-offs of the run: the report drawn from a ``RunOutcome`` in memory is the page
``lvlm-lens report`` draws from the files the store wrote."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lvlm_lens.attribution.head_attribution import AttributionConfig, fit_result
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.data import Record
from lvlm_lens.run.outcome import (
    AttributedExample,
    AttributionRun,
    RunOutcome,
    attributed_examples,
)
from lvlm_lens.run.report_files import load_report_inputs, save_report_inputs
from lvlm_lens.run.store import load_prediction, prediction_path, read_predictions, save_prediction
from lvlm_lens.viz.report import write_report
from tests.helpers import noise_image


def record(i: int, answer: str = "star") -> Record:
    return Record(noise_image(8, 8, i), f"<image> prompt {i}", answer, id=f"ex{i}")


def outcome(tmp_path) -> RunOutcome:
    """Two examples whose metric drops by 2 when head L1H0 is ablated (known answer)."""
    cfg = AttributionConfig(n_masks=200, rate=0.3)
    masks = sample_masks(200, 2, 2, 0.3, 0)
    metrics = torch.stack([5.0 - 2.0 * masks[:, 1, 0].float(), 3.0 - 2.0 * masks[:, 1, 0].float()])
    result = fit_result(masks, metrics, cfg, "toy", ["a", "b"])
    recs = [record(0), record(1)]
    infos = [AttributedExample.predicted(i, r, 7, 7, "star", f"row{i}").to_json()
             for i, r in enumerate(recs)]  # fmt: skip
    examples = attributed_examples(recs, infos, ["row0", "row1"], [0, 1], result)
    run = AttributionRun(tmp_path, result, examples, metrics, masks, baselines=None)
    rankings = {"attention weight": torch.rand(2, 2)}
    return RunOutcome(run, {"model_label": "toy", "n_examples": 2}, ["a note"], rankings)


def test_the_outcome_carries_what_the_report_shows(tmp_path):
    out = outcome(tmp_path)
    assert out.run.result.top_heads(1) == [(1, 0)]
    data = out.report_data()
    assert data.result is out.run.result and data.rankings is out.rankings
    assert data.notes == ["a note"] and data.summary["notes"] == ["a note"]
    assert "notes" not in out.summary  # the outcome's summary is left as it is
    assert data.curves == {} and data.random_band is None and data.examples == []
    assert out.run.engines == {}


def test_the_page_from_memory_is_the_page_from_the_files(tmp_path):
    out = outcome(tmp_path)
    out.run.result.save(tmp_path / "attribution")
    save_report_inputs(tmp_path, out.report_data())
    from_memory = write_report(tmp_path, out.report_data()).read_text()
    from_files = write_report(tmp_path, load_report_inputs(tmp_path)).read_text()
    assert from_memory == from_files and "L1H0" in from_memory and "a note" in from_memory


def test_a_prediction_file_holds_the_keys_it_always_held_and_reads_back(tmp_path):
    """The example's stored form is the ``examples/*.json`` file of earlier versions, byte for
    byte (a run written before the typed record resumes), and it reads back to the same record."""
    rec = record(3, answer="circle")
    example = AttributedExample.predicted(3, rec, 41, 60, "star", "abc123")
    assert not example.correct and not example.attributed and example.prompt == rec.prompt
    save_prediction(tmp_path, example)
    written = prediction_path(tmp_path, 3).read_text()
    assert written == (
        '{\n  "index": 3,\n  "id": "ex3",\n  "answer": "circle",\n  "answer_id": 41,\n'
        '  "prediction_id": 60,\n  "prediction": "star",\n  "correct": false,\n'
        '  "row": "abc123"\n}'
    )
    back = AttributedExample.from_json(load_prediction(tmp_path, 3, "abc123"), rec, "abc123")
    assert back == example and back.record is rec
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.correct = True  # type: ignore[misc]


def test_examples_carry_their_row_of_the_attribution(tmp_path):
    """Only the kept examples are attributed, each with its own row of the result."""
    cfg = AttributionConfig(n_masks=200, rate=0.3)
    masks = sample_masks(200, 2, 2, 0.3, 0)
    heads = (masks[:, 1, 0].float(), masks[:, 0, 1].float())
    metrics = torch.stack([5.0 - 2.0 * heads[0], 3.0 - 1.0 * heads[1]])  # examples 0 and 2
    result = fit_result(masks, metrics, cfg, "toy", ["ex0", "ex2"])
    recs = [record(i) for i in range(3)]
    for i, r in enumerate(recs):
        guess = 7 if i != 1 else 8  # example 1 is answered wrongly
        save_prediction(tmp_path, AttributedExample.predicted(i, r, 7, guess, "x", f"r{i}"))
    rows = [f"r{i}" for i in range(3)]
    examples = attributed_examples(recs, read_predictions(tmp_path, rows), rows, [0, 2], result)
    run = AttributionRun(tmp_path, result, examples, metrics, masks, baselines=None)
    assert run.kept == [0, 2] and [e.id for e in run.attributed] == ["ex0", "ex2"]
    assert [e.correct for e in examples] == [True, False, True]
    assert examples[1].importance is None and examples[1].pearson_r is None
    top = [divmod(int(e.importance.flatten().argmax()), 2) for e in run.attributed]
    assert top == [(1, 0), (0, 1)]
    assert examples[0].importance[1, 0] == pytest.approx(2.0, abs=1e-2)
    assert examples[2].importance[0, 1] == pytest.approx(1.0, abs=1e-2)
    assert examples[2].pearson_r == pytest.approx(float(result.pearson_r[1]))
    assert json.loads(prediction_path(tmp_path, 1).read_text())["correct"] is False
