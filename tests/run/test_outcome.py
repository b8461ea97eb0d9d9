"""The typed hand-offs of the run: the report drawn from a ``RunOutcome`` in memory is the page
``lvlm-lens report`` draws from the files the store wrote."""

from __future__ import annotations

import torch

from lvlm_lens.attribution.head_attribution import AttributionConfig, fit_result
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.run.outcome import AttributionRun, RunOutcome
from lvlm_lens.run.report_files import load_report_inputs, save_report_inputs
from lvlm_lens.viz.report import write_report


def outcome(tmp_path) -> RunOutcome:
    """Two examples whose metric drops by 2 when head L1H0 is ablated (known answer)."""
    cfg = AttributionConfig(n_masks=200, rate=0.3)
    masks = sample_masks(200, 2, 2, 0.3, 0)
    metrics = torch.stack([5.0 - 2.0 * masks[:, 1, 0].float(), 3.0 - 2.0 * masks[:, 1, 0].float()])
    result = fit_result(masks, metrics, cfg, "toy", ["a", "b"])
    infos = [{"index": i, "id": n, "correct": True} for i, n in enumerate("ab")]
    run = AttributionRun(tmp_path, result, infos, [0, 1], metrics, masks, baselines=None)
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
