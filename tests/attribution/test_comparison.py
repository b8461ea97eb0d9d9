"""The comparison's conclusions: given curves where a known ranking wins, the notes name it."""

from __future__ import annotations

import re

import pytest
import torch

from lvlm_lens.attribution.comparison import HEAD_ATTRIBUTION, comparison_notes, early_mean
from lvlm_lens.attribution.curves import Curves, RandomBand

N_HEADS = 40  # fraction 0.1 -> the notes average over k in {1, 2, 4} (k <= 4)
KS = torch.tensor([0, 1, 2, 4, 8, 40])


def curves(completeness: list[float], faithfulness: list[float]) -> Curves:
    c, f = torch.tensor(completeness, dtype=torch.float64), torch.tensor(faithfulness).double()
    return Curves(KS, f, c, f, c, 1.0, 0.0)


def band(median_completeness: list[float]) -> RandomBand:
    med = torch.tensor(median_completeness, dtype=torch.float64)
    rows = torch.stack([med - 0.5, med, med + 0.5])  # wide: only the median gives the verdicts
    return RandomBand(KS, (0.05, 0.5, 0.95), rows, rows, rows, rows)


def test_notes_name_the_winner_of_each_curve():
    runs = {
        # wins completeness early (mean over k<=4: 0.6), loses faithfulness (0.1)
        "attention weight": curves([0, 0.5, 0.6, 0.7, 0.2, 1], [0, 0.1, 0.1, 0.1, 0.9, 1]),
        # second on completeness (0.4), wins faithfulness (0.5)
        HEAD_ATTRIBUTION: curves([0, 0.3, 0.4, 0.5, 0.9, 1], [0, 0.4, 0.5, 0.6, 0.7, 1]),
        # best of all at k = 8 and 40, outside the early window: must not count
        "single-head ablation": curves([0, 0.1, 0.1, 0.1, 1, 1], [0, 0.2, 0.2, 0.2, 1, 1]),
    }
    completeness, faithfulness, random_note = comparison_notes(
        runs, band([0, 0.1, 0.2, 0.3, 0.5, 1]), N_HEADS
    )
    assert "Mean completeness" in completeness and "does NOT win" in completeness
    assert "(attention weight does)" in completeness
    means = re.findall(r"([a-z -]+?) (\d\.\d{3})", completeness.split(": ", 1)[1])
    assert [(n.strip(" ,"), v) for n, v in means] == [
        ("attention weight", "0.600"), ("head attribution", "0.400"),
        ("single-head ablation", "0.100"),
    ]  # fmt: skip
    assert "Mean faithfulness" in faithfulness and "head attribution is best" in faithfulness
    assert "NOT" not in faithfulness
    assert "beats the median random ranking" in random_note and "does not" not in random_note


def test_random_band_note_when_one_k_falls_below_the_median():
    runs = {HEAD_ATTRIBUTION: curves([0, 0.3, 0.1, 0.5, 0.9, 1], [0, 0.4, 0.5, 0.6, 0.7, 1])}
    *_, note = comparison_notes(runs, band([0, 0.1, 0.2, 0.3, 0.5, 1]), N_HEADS)
    assert "does not beat the median random ranking" in note  # k = 2: 0.1 < 0.2
    *_, note = comparison_notes(runs, band([0, 0.1, 0.05, 0.3, 0.95, 1]), N_HEADS)
    assert "beats" in note and "does not" not in note  # k = 8 is outside the window


def test_early_mean_by_hand():
    c = curves([0, 0.5, 0.6, 0.7, 0.2, 1], [0, 0.1, float("nan"), 0.4, 0.9, 1])
    assert early_mean(c, "completeness", 0.1, N_HEADS) == pytest.approx(0.6)
    assert early_mean(c, "faithfulness", 0.1, N_HEADS) == pytest.approx(0.25)  # nan skipped
    assert early_mean(c, "completeness", 0.05, N_HEADS) == pytest.approx(0.55)  # k <= 2
    assert early_mean(c, "completeness", 0.001, N_HEADS) == pytest.approx(0.5)  # at least k=1

