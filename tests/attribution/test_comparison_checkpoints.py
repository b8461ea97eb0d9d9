"""A ranking's checkpointed curves are reused only for that ranking: a resumed comparison whose
head attribution changed (a row outside the compared examples was edited, or an example became
wrong) draws the new ranking's curves, not the old ones."""

from __future__ import annotations

import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.comparison import HEAD_ATTRIBUTION, compare_rankings
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from tests.helpers import noise_image


class Store:
    """Checkpoints in a dict."""

    def __init__(self):
        self.pieces = {}

    def load(self, key):
        return self.pieces.get(key)

    def save(self, key, tensors):
        self.pieces[key] = tensors


def result(coef: torch.Tensor) -> AttributionResult:
    one = torch.ones(2, dtype=torch.float64)
    return AttributionResult(torch.stack([coef, coef]), one, one, one, pooled_coef=coef)


def test_a_changed_ranking_never_reuses_the_old_rankings_curves(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))
    cfg = HeadAblation(baseline="mean")
    prompt = "USER: <image>\nwhat is this ? ASSISTANT:"
    inputs = [model.prepare(noise_image(20, 20, i), prompt) for i in range(2)]
    refs = [noise_image(20, 20, 9)]
    bases = [compute_baseline(model, x, cfg, reference_images=refs) for x in inputs]
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    old = torch.linspace(-1, 1, shape[0] * shape[1], dtype=torch.float64).view(shape)
    new = -old  # the opposite order of heads
    kw = dict(n_random=1, checkpoints=(store := Store()), keys=["a", "b"], progress=False)
    compare_rankings(model, result(old), inputs, bases, cfg, "logit", **kw)
    _, resumed, _ = compare_rankings(model, result(new), inputs, bases, cfg, "logit", **kw)
    _, fresh, _ = compare_rankings(model, result(new), inputs, bases, cfg, "logit",
                                   n_random=1, progress=False)  # fmt: skip
    got, want = resumed[HEAD_ATTRIBUTION], fresh[HEAD_ATTRIBUTION]
    assert torch.equal(torch.as_tensor(got.faithfulness), torch.as_tensor(want.faithfulness))
    assert torch.equal(torch.as_tensor(got.completeness), torch.as_tensor(want.completeness))
    # both head attributions' curves are kept; the other rankings' (3) and the random one's
    # are reused: they depend on the compared examples only
    assert sum(k.startswith("curves/") for k in store.pieces) == 2 + 3 + 1
