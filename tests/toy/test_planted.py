"""The planted circuit: only known heads can carry the image to the text; head attribution's
recall of them at k, against the other rankings (docs/toy_model.md, "Planted circuit")."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens.toy.planted import (
    METHODS,
    planted_heads,
    planted_report,
    planted_toy,
    rank_heads,
    recall_precision,
)

#: Stated in docs/toy_model.md (5 planted sets of 6 of 32 heads, recall at k = 6).
HEAD_ATTRIBUTION_RECALL = 0.76
HEAD_ATTRIBUTION_ABS_RECALL = 0.93


@pytest.fixture(scope="module")
def report():
    return planted_report(seeds=(0, 1, 2, 3, 4), k=6, n_masks=300)


def test_only_planted_heads_read_the_image():
    """Ablating an unplanted head's image keys/values changes the answer logit by exactly 0,
    and it puts exactly 0 attention on the image from the final query; without the mask both
    are non-zero for most heads."""
    circuit = planted_toy(k=6, seed=0)
    truth = circuit.truth
    scores = rank_heads(circuit, n_masks=60)
    assert (scores["single_head_ablation"][~truth] == 0).all()
    assert (scores["attention_weight"][~truth] == 0).all()
    assert (scores["attention_weight"][truth] > 0.05).all()
    circuit.model.reset_hooks(including_permanent=True)
    free = rank_heads(circuit, n_masks=60)
    assert (free["attention_weight"][~truth] > 0).float().mean() > 0.9


def test_recall_precision_by_hand():
    truth = torch.tensor([[True, False, False], [False, True, False]])
    scores = torch.tensor([[0.9, 0.5, 0.0], [0.0, -2.0, 0.7]])
    assert recall_precision(scores, truth, 2) == (0.5, 0.5)  # top 2: (0,0), (1,2)
    assert recall_precision(scores, truth, 2, absolute=True) == (1.0, 1.0)  # |-2| first
    assert recall_precision(scores, truth, 4) == (0.5, 0.25)  # ties at 0 by index: (0,2)
    with pytest.raises(ValueError, match="differ"):
        recall_precision(scores[:1], truth, 2)


def test_planted_heads_are_distinct_and_seeded():
    heads = planted_heads(4, 8, 6, seed=3)
    assert len(set(heads)) == 6 and heads == sorted(heads) == planted_heads(4, 8, 6, seed=3)
    assert heads != planted_heads(4, 8, 6, seed=4)
    with pytest.raises(ValueError, match="k must be"):
        planted_heads(4, 8, 33, seed=0)


def test_head_attribution_recall_is_what_the_docs_state(report):
    at_k = report[report["at"] == 6].groupby("method")[["recall", "abs_recall"]].mean()
    assert set(at_k.index) == set(METHODS)
    ha = at_k.loc["head_attribution"]
    assert ha["recall"] >= HEAD_ATTRIBUTION_RECALL, at_k
    assert ha["abs_recall"] >= HEAD_ATTRIBUTION_ABS_RECALL, at_k
    # attention weight reads the mask itself: it finds every planted head
    assert at_k.loc["attention_weight", "recall"] == 1.0
