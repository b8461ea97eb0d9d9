"""The ranking comparison of ``lvlm-lens attribute`` is checkpointed: a run killed in the middle
of it and resumed equals an uninterrupted run, and finished pieces are not recomputed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lvlm_lens.attribution.head_attribution import AttributionConfig
from lvlm_lens.interventions.ablation import HeadAblation
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.run.job import attribute
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.store import CheckpointFiles


class Killed(Exception):
    pass


@pytest.fixture
def counted(monkeypatch):
    """Counts engine batches; ``log`` records the count at each comparison checkpoint written,
    and ``kill_after`` raises right after that many checkpoints (as a SIGKILL would stop it)."""
    state = {"calls": 0, "log": [], "kill_after": None}
    run_batch, save = AblationEngine.run_batch, CheckpointFiles.save

    def counting(self, *a, **kw):
        state["calls"] += 1
        return run_batch(self, *a, **kw)

    def saving(self, key, tensors):
        save(self, key, tensors)
        state["log"].append((key, state["calls"]))
        if state["kill_after"] is not None and len(state["log"]) == state["kill_after"]:
            raise Killed

    monkeypatch.setattr(AblationEngine, "run_batch", counting)
    monkeypatch.setattr(CheckpointFiles, "save", saving)
    return state


def options(model, out):
    cfg = AttributionConfig(n_masks=32, rate=0.2, batch_size=16,
                            ablation=HeadAblation(baseline="mean"))
    return RunOptions(out=str(out), model=str(model), n_examples=3, n_reference=2,
                      keep_wrong=True, chunk_masks=16, n_random=2, attribution=cfg)


def outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    return load_file(str(out / "rankings.safetensors")), summary["curves"]


def test_killed_comparison_resumes_identically_without_redoing_work(
    tiny_checkpoint, tmp_path, counted
):
    model = tiny_checkpoint("llava-llama")
    attribute(options(model, tmp_path / "whole"))
    total, log = counted["calls"], list(counted["log"])
    assert len(log) >= 10 and total == log[-1][1] > log[0][1]  # the last piece ends it
    # killed after a few pieces (per-example rankings done, some curves not)
    kill = next(i for i, (key, _) in enumerate(log) if key.startswith("curves/")) + 2
    counted.update(calls=0, log=[], kill_after=kill)
    with pytest.raises(Killed):
        attribute(options(model, tmp_path / "killed"))
    assert counted["calls"] == log[kill - 1][1]
    counted.update(calls=0, log=[], kill_after=None)
    attribute(options(model, tmp_path / "killed"))
    assert counted["calls"] == total - log[kill - 1][1]  # only the unfinished pieces ran
    assert [key for key, _ in counted["log"]] == [key for key, _ in log[kill:]]
    (ra, ca), (rb, cb) = outputs(tmp_path / "whole"), outputs(tmp_path / "killed")
    assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)
    assert ca == cb  # bit-identical curves (JSON floats round-trip exactly)
    counted.update(calls=0, log=[])
    attribute(options(model, tmp_path / "killed"))  # a finished run recomputes nothing
    assert counted["calls"] == 0 and counted["log"] == []
