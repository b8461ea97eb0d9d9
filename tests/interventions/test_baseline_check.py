"""The all-heads-ablated answer of a baseline, and the examples too flat to normalise."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.data import synthetic_records
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline, head_ablation_hooks
from lvlm_lens.interventions.baseline_check import (
    baseline_note,
    check_baseline,
    flag_small_effects,
)
from lvlm_lens.interventions.metrics import answer_logit
from lvlm_lens.toy import toy_checkpoint_path


def test_small_and_negative_effects_are_flagged():
    effect = torch.tensor([10.0, 9.0, 0.5, -1.0, 11.0])
    assert flag_small_effects(effect).tolist() == [False, False, True, True, False]
    assert flag_small_effects(effect, 0.01).tolist() == [False, False, False, True, False]
    assert flag_small_effects(torch.tensor([-1.0, 0.0, 0.5])).all()  # median <= 0: nothing to use
    assert flag_small_effects(torch.zeros(0)).shape == (0,)


@pytest.mark.parametrize("baseline", ["mean", "zero"])
def test_check_matches_the_reference_hooks(baseline):
    """Answers and metrics equal a plain hooked forward with every head ablated."""
    model = HookedLVLM.from_pretrained(toy_checkpoint_path())
    records = synthetic_records(4, seed=31)
    refs = [r.image for r in synthetic_records(4, seed=32)]
    cfg = HeadAblation(baseline=baseline)
    inputs = [model.prepare(r.image, r.prompt, answers=r.answer) for r in records]
    bases = [compute_baseline(model, x, cfg, reference_images=refs) for x in inputs]
    check = check_baseline(model, inputs, bases, cfg, "logit")
    every = torch.ones(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    with torch.no_grad():
        for i, (x, b) in enumerate(zip(inputs, bases, strict=True)):
            clean = model(x)[:, -1]
            ablated = model.run_with_hooks(x, fwd_hooks=head_ablation_hooks(model, x, every, b))
            ablated = ablated[:, -1]
            assert int(check.answer_ids[i]) == int(ablated.argmax(-1)[0])
            assert check.answers[i] == model.tokenizer.convert_ids_to_tokens(
                int(check.answer_ids[i])
            )
            ref_effect = answer_logit(clean, x.answer_ids) - answer_logit(ablated, x.answer_ids)
            assert float(check.effect[i]) == pytest.approx(float(ref_effect[0]), abs=1e-3)
    assert check.clean.gt(check.ablated).any()
    frame = check.to_frame()
    assert list(frame.columns) == ["ablated_answer", "clean", "ablated", "effect", "flagged"]
    summary = check.summary()
    assert summary["n_examples"] == 4 and sum(check.answer_shares().values()) == pytest.approx(1)
    assert summary["most_common_answer"] == max(set(check.answers), key=check.answers.count)
    assert repr(baseline) in baseline_note(check, baseline)


def test_check_refuses_batches_and_mismatched_baselines(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))
    rec = synthetic_records(2, seed=1)
    inp = model.prepare([r.image for r in rec], [r.prompt for r in rec])
    cfg = HeadAblation(baseline="zero")
    base = compute_baseline(model, inp, cfg)
    with pytest.raises(ValueError, match="one-example inputs"):
        check_baseline(model, [inp], [base], cfg)
    with pytest.raises(ValueError, match="1 baselines for 2 inputs"):
        check_baseline(model, [inp, inp], [base], cfg)
