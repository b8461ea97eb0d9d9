"""One place prepares inputs from records and one builds an example's engine: both give what
the direct calls they replace give."""

from __future__ import annotations

import torch

from lvlm_lens.attribution.head_attribution import AttributionConfig, build_engine
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.run.examples import prepare_record, prepare_records
from tests.run.test_fingerprints import model  # noqa: F401 (fixture)
from tests.run.test_runner import records


def test_prepared_records_and_built_engines_match_the_direct_calls(model):  # noqa: F811
    recs = records(model, 2)
    inputs = prepare_records(model, recs)
    for rec, inp in zip(recs, inputs, strict=True):
        direct = model.prepare(rec.image, rec.prompt, answers=rec.answer)
        assert torch.equal(inp.input_ids, direct.input_ids)
        assert torch.equal(inp.answer_ids, direct.answer_ids)
    assert torch.equal(prepare_record(model, recs[0], "first").input_ids, inputs[0].input_ids)
    cfg = AttributionConfig(n_masks=40, metric="logprob", batch_size=7,
                            ablation=HeadAblation(baseline="blank"))  # fmt: skip
    base = compute_baseline(model, inputs[0], cfg.ablation)
    masks = sample_masks(40, model.cfg.n_layers, model.cfg.n_heads, 0.3, 1)
    engine = build_engine(model, inputs[0], base, cfg.ablation, cfg.metric, cfg.batch_size)
    assert engine.batch_size == 7
    direct = AblationEngine(model, inputs[0], base, cfg.ablation, "logprob", 7)
    assert torch.equal(engine.run(masks, progress=False), direct.run(masks, progress=False))


def test_a_run_prepares_each_example_and_its_baseline_once(tiny_checkpoint, tmp_path,
                                                           monkeypatch):  # fmt: skip
    """The comparison reuses the masked runs' engines with their inputs and baselines: over a
    whole ``lvlm-lens attribute`` run (blank baseline: one forward per call), each example's
    input is prepared and its baseline computed once."""
    import lvlm_lens.run.examples as examples
    import lvlm_lens.run.job as job
    import lvlm_lens.run.runner as runner
    from lvlm_lens.run.options import RunOptions

    calls = {"prepare": 0, "baseline": 0}

    def counted(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapper

    for module in (runner, job, examples):  # wherever the run's modules call it
        if hasattr(module, "prepare_record"):
            monkeypatch.setattr(module, "prepare_record", counted("prepare", module.prepare_record))
    monkeypatch.setattr(runner, "compute_baseline", counted("baseline", runner.compute_baseline))
    cfg = AttributionConfig(n_masks=32, rate=0.2, ablation=HeadAblation(baseline="blank"))
    opts = RunOptions(out=str(tmp_path / "run"), model=str(tiny_checkpoint("llava-llama")),
                      n_examples=3, n_reference=2, keep_wrong=True, n_random=1,
                      attribution=cfg)  # fmt: skip
    outcome = job.run_job(opts)
    assert outcome.curves and len(outcome.run.attributed) == 3
    assert calls == {"prepare": 3, "baseline": 3}
