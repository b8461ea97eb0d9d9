"""Answer metrics on final-position logits."""

from __future__ import annotations

import math

import pytest
import torch

from lvlm_lens.interventions.metrics import (
    METRICS,
    answer_logit,
    answer_logprob,
    answer_prob,
    final_logits,
    get_metric,
    logit_diff,
    relative_prob_change,
)
from lvlm_lens.model.inputs import LVLMInput

LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 4.0, 4.5]])
ANSWERS = torch.tensor([2, 2])


def test_final_logits_takes_the_last_column():
    logits = torch.randn(2, 5, 4)
    mask = torch.tensor([[0, 0, 0, 0, 1], [1, 1, 1, 1, 1]])  # a one-token example is fine
    inp = LVLMInput(input_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=mask, groups={})
    assert torch.equal(final_logits(logits, inp), logits[:, -1])
    right = LVLMInput(input_ids=inp.input_ids, attention_mask=mask.flip(-1), groups={})
    with pytest.raises(ValueError, match="left-padded"):
        final_logits(logits, right)
    with pytest.raises(ValueError, match="batch, pos, d_vocab"):
        final_logits(logits[:, -1])


def test_values():
    assert torch.equal(answer_logit(LOGITS, ANSWERS), torch.tensor([2.0, 4.0]))
    # foil None: best non-answer token (3.0 in row 0, 4.5 in row 1)
    assert torch.equal(logit_diff(LOGITS, ANSWERS), torch.tensor([-1.0, -0.5]))
    assert torch.equal(logit_diff(LOGITS, ANSWERS, torch.tensor([0, 1])), torch.tensor([1.0, 5.0]))
    assert torch.equal(logit_diff(LOGITS, ANSWERS, 3), torch.tensor([2.0, -0.5]))
    lp = LOGITS.log_softmax(-1)[[0, 1], ANSWERS]
    assert torch.allclose(answer_logprob(LOGITS, ANSWERS), lp)
    assert torch.allclose(answer_prob(LOGITS, ANSWERS), lp.exp())
    # full [batch, pos, vocab] logits use the last position
    full = torch.stack([torch.randn_like(LOGITS), torch.randn_like(LOGITS), LOGITS], dim=1)
    for fn in METRICS.values():
        assert torch.equal(fn(full, ANSWERS), fn(LOGITS, ANSWERS))


# Hand-computed: probabilities (1/4, 1/4, 1/2) in row 0 and (1/8, 3/8, 1/2) in row 1 (row 1 is
# row 0 of (1, 3, 4) / 8 on a log scale); answers 2 (the top token) and 1 (not the top token).
LN = torch.tensor([[0.0, 0.0, math.log(2)], [0.0, math.log(3), math.log(4)]])
ANS = torch.tensor([2, 1])
EXPECTED = {
    "logit": [math.log(2), math.log(3)],
    "logit_diff": [math.log(2) - 0.0, math.log(3) - math.log(4)],  # foil: best other token
    "logprob": [math.log(1 / 2), math.log(3 / 8)],
    "prob": [1 / 2, 3 / 8],
}


def test_every_metric_has_hand_computed_values():
    missing = set(METRICS) - set(EXPECTED)
    assert not missing, f"add hand-computed values for {sorted(missing)} to EXPECTED"
    for name, want in EXPECTED.items():
        got = get_metric(name)(LN, ANS)
        assert torch.allclose(got, torch.tensor(want), atol=1e-6), name


def test_logit_diff_when_the_answer_is_the_top_token():
    logits = torch.tensor([[1.0, 5.0, 3.0, 0.0], [2.0, 2.0, -1.0, 0.0]])
    # the answer itself is not its own foil: top other token 3.0; a tie with another token is 0
    assert torch.equal(logit_diff(logits, torch.tensor([1, 0])), torch.tensor([2.0, 0.0]))
    assert torch.equal(logit_diff(logits, 1), torch.tensor([2.0, 0.0]))  # one id for all rows
    assert torch.equal(answer_logit(logits, 1), torch.tensor([5.0, 2.0]))


def test_bf16_logprob_is_computed_in_fp32():
    lp = answer_logprob(LOGITS.bfloat16(), ANSWERS)
    assert lp.dtype == torch.float32


def test_relative_prob_change():
    new = LOGITS.clone()
    new[:, 2] += 1.0
    p_new, p_clean = answer_prob(new, ANSWERS), answer_prob(LOGITS, ANSWERS)
    rel = relative_prob_change(new, LOGITS, ANSWERS)
    assert torch.allclose(rel, (p_new - p_clean) / p_clean)
    assert (rel > 0).all()
    assert torch.equal(relative_prob_change(LOGITS, LOGITS, ANSWERS), torch.zeros(2))
    # by hand: answer probability 1/4 -> 1/2 is +100 %, 1/2 -> 1/4 is -50 %
    quarter = torch.tensor([[0.0, 0.0, math.log(2)]])
    half = torch.tensor([[0.0, math.log(2), 0.0]])
    one = torch.tensor([1])
    assert torch.allclose(relative_prob_change(half, quarter, one), torch.tensor([1.0]))
    assert torch.allclose(relative_prob_change(quarter, half, one), torch.tensor([-0.5]))


def test_registry():
    assert set(METRICS) == {"logit", "logit_diff", "logprob", "prob"}
    for name, fn in METRICS.items():
        assert get_metric(name) is fn
    assert get_metric(answer_prob) is answer_prob
    with pytest.raises(KeyError, match="known metrics.*logit_diff"):
        get_metric("accuracy")
