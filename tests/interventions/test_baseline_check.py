"""The all-heads-ablated answer of a baseline, and the examples too flat to normalise."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.head_attribution import build_engine
from lvlm_lens.data import synthetic_records
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline, head_ablation_hooks
from lvlm_lens.interventions.baseline_check import (
    BaselineCheck,
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
    none = flag_small_effects(torch.zeros(0))
    assert none.shape == (0,) and none.dtype == torch.bool  # a mask: ~none keeps no example


def test_note_and_kept_examples_by_hand():
    """The report line for both shares of the most common all-heads answer, word for word;
    the kept examples, also when there are none."""
    effect = torch.tensor([4.0, 0.1, 5.0, 3.0])
    check = BaselineCheck(answers=["cat", "cat", "dog", "cat"],
                          answer_ids=torch.tensor([1, 1, 2, 1]), clean=effect + 1,
                          ablated=torch.ones(4), effect=effect, flagged=flag_small_effects(effect))
    assert check.kept == [0, 2, 3]
    assert baseline_note(check, "mean") == (
        "Baseline 'mean': not class-neutral: with every head ablated the model answers 'cat' "
        "for 75% of the examples. 1 of 4 example(s) have an all-heads effect below 10% of the "
        "median and are left out of the faithfulness / completeness curves.")
    mixed = replace(check, answers=["cat", "dog", "ant", "bee"])
    assert baseline_note(mixed, "zero") == (
        "Baseline 'zero': with every head ablated the most common answer is 'cat' (25% of the "
        "examples). 1 of 4 example(s) have an all-heads effect below 10% of the median and are "
        "left out of the faithfulness / completeness curves.")
    empty = torch.zeros(0)
    nothing = BaselineCheck([], torch.zeros(0, dtype=torch.long), empty, empty, empty,
                            flag_small_effects(empty))
    assert nothing.kept == [] and nothing.summary()["median_effect"] is None


@pytest.mark.parametrize("baseline", ["mean", "zero"])
def test_check_matches_the_reference_hooks(baseline):
    """Answers and metrics equal a plain hooked forward with every head ablated."""
    model = HookedLVLM.from_pretrained(toy_checkpoint_path())
    records = synthetic_records(4, seed=31)
    refs = [r.image for r in synthetic_records(4, seed=32)]
    cfg = HeadAblation(baseline=baseline)
    inputs = [model.prepare(r.image, r.prompt, answers=r.answer) for r in records]
    bases = [compute_baseline(model, x, cfg, reference_images=refs) for x in inputs]
    check = check_baseline(model, [build_engine(model, x, b, cfg, "logit")
                                   for x, b in zip(inputs, bases, strict=True)])
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


def test_check_refuses_batch_engines_and_mismatched_keys(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))
    rec = synthetic_records(2, seed=1)
    inp = model.prepare([r.image for r in rec], [r.prompt for r in rec])
    cfg = HeadAblation(baseline="zero")
    base = compute_baseline(model, inp, cfg)
    engine = build_engine(model, inp, base, cfg)
    with pytest.raises(ValueError, match="one-example engines, got an engine on a batch of 2"):
        check_baseline(model, [engine])
    one = build_engine(model, inp.select(0), compute_baseline(model, inp.select(0), cfg), cfg)
    with pytest.raises(ValueError, match="got 1 keys for 2 engines"):
        check_baseline(model, [one, one], keys=["a"])
