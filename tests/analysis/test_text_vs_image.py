"""Text-only vs image circuits: description spans, overlap statistics, an end-to-end run."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lvlm_lens import AttributionConfig
from lvlm_lens.analysis import TextVsImageConfig, span_group, text_vs_image
from lvlm_lens.analysis.text_vs_image import (
    TextVsImageResult,
    compare_maps,
    jaccard,
    random_jaccard,
    top_k_set,
)
from lvlm_lens.data import generate_dataset, image_prompt, text_prompt


def test_span_group_marks_the_description_tokens(toy):
    examples = generate_dataset(3, seed=2)
    prompts = [text_prompt(ex, i) for i, ex in enumerate(examples)]
    inp = toy.prepare(None, prompts, [ex.label for ex in examples])
    mask = span_group(toy, inp, [ex.description for ex in examples])
    for i, ex in enumerate(examples):
        words = [toy.tokenizer.convert_ids_to_tokens(int(t))
                 for t in inp.input_ids[i][mask[i]]]
        assert words == ex.description.split()
    with pytest.raises(ValueError, match="does not occur"):
        span_group(toy, inp, ["a purple elephant"] * 3)


def test_random_jaccard_is_the_exact_overlap_distribution():
    values, probs = random_jaccard(32, 5)
    assert probs.sum() == pytest.approx(1.0)
    # E|A & B| = k^2 / n for two random k-subsets
    overlap = values * 10 / (1 + values)  # i = J * 2k / (1 + J)
    assert (overlap * probs).sum() == pytest.approx(25 / 32)
    rng = np.random.default_rng(0)
    sims = [len(set(rng.choice(32, 5, replace=False)) & set(rng.choice(32, 5, replace=False)))
            for _ in range(20000)]
    assert np.mean(sims) == pytest.approx(25 / 32, abs=0.03)


def test_identical_and_unrelated_maps():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(6, 4, 8))
    j, rand, rho, per = compare_maps(maps, maps, k=4, n_boot=100)
    assert j.value == 1.0 and rho.value == pytest.approx(1.0) and per.value == 1.0
    assert j.p_value == pytest.approx(1 / math.comb(32, 4))
    assert rand < 0.2
    j2, _, rho2, _ = compare_maps(maps, -maps, k=4, n_boot=100)
    assert j2.value == 0.0 and rho2.value == pytest.approx(-1.0)


def test_end_to_end_on_the_toy(toy):
    examples = generate_dataset(3, seed=4)
    labels = [ex.label for ex in examples]
    image_inp = toy.prepare([ex.image for ex in examples], [image_prompt(0)] * 3, labels)
    text_inp = toy.prepare(None, [text_prompt(ex) for ex in examples], labels)
    cfg = TextVsImageConfig(attribution=AttributionConfig(n_masks=120, rate=0.1), k=4,
                            n_boot=50)
    res = text_vs_image(toy, image_inp, text_inp, [ex.description for ex in examples], cfg,
                        progress=False)
    assert res.image.options["ablation"]["source"] == "image"
    assert res.text.options["ablation"]["source"] == "description"
    # ablating heads' access to the description moves the text answer: a real fit
    assert float(res.text.pearson_r.median()) > 0.3
    frame = res.to_frame()
    assert len(frame) == 32 and frame.image_top_k.sum() == 4 and frame.text_top_k.sum() == 4
    assert set(frame.kind) == {"self"}  # a plain family: every head is self-attention
    unique = res.unique_heads()
    assert len(unique["image only"]) + len(unique["shared"]) == 4
    assert res.plot().__class__.__name__ == "Figure"
    assert set(res.summary().statistic).issuperset({"Spearman of head maps"})


def test_random_jaccard_by_enumerating_every_pair_of_subsets():
    """For 5 heads and k = 2, every pair of 2-subsets (10 x 10) gives the exact distribution
    of the Jaccard index. Fails with the Jaccard as ``overlap / k`` or the hypergeometric
    term ``comb(n, k - j)``."""
    subsets = [set(s) for s in itertools.combinations(range(5), 2)]
    counts = Counter(len(a & b) / len(a | b) for a in subsets for b in subsets)
    values, probs = random_jaccard(5, 2)
    assert dict(zip(values.tolist(), probs.tolist(), strict=True)) == pytest.approx(
        {v: c / 100 for v, c in counts.items()})


def test_top_k_set_and_jaccard_by_hand():
    """Top-k takes the largest scores, ties to the lower index; Jaccard is ``|a & b| / |a | b|``,
    NaN for two empty sets. Fails with the smallest scores or ``|a & b| / |a|``."""
    scores = np.array([[1.0, 3.0], [3.0, 2.0]])
    assert top_k_set(scores, 1) == {1} and top_k_set(scores, 3) == {1, 2, 3}
    assert jaccard({1, 2}, {2, 3, 4}) == pytest.approx(1 / 4)
    assert math.isnan(jaccard(set(), set()))


def test_compare_maps_by_hand_with_the_seeded_resamples():
    """4 heads, k = 2: the mean maps' top-2 are {0, 1} and {1, 2} (Jaccard 1/3); two random
    2-subsets of 4 overlap in 0 / 1 / 2 heads with probabilities 1/6, 4/6, 1/6, so
    ``P(J >= 1/3) = 5/6`` and ``E[J] = 7/18``; per example the Jaccards are 1/3, 1/3, 0. The CIs
    are the quantiles of the statistic on the same seeded resamples of the examples. Fails with
    ``>`` in the p-value (1/6), the plain mean of the Jaccard values as the expectation, the
    text map read from the image columns, or a per-example Jaccard of the image with itself."""
    image = np.array([[3, 2, 1, 0], [4, 1, 2, -1], [2, 3, 0, 1]], float).reshape(3, 1, 4)
    text = np.array([[0, 2, 3, 1], [1, 3, 2, 0], [-1, 1, 4, 2]], float).reshape(3, 1, 4)
    j, rand, rho, per = compare_maps(image, text, k=2, n_boot=200, seed=5)
    assert j.value == pytest.approx(1 / 3) and j.p_value == pytest.approx(5 / 6)
    assert rand == pytest.approx(7 / 18)
    assert per.value == pytest.approx(2 / 9)
    idx = np.random.default_rng(5).integers(0, 3, size=(200, 3))

    def top2(v):
        return set(np.argsort(-v, kind="stable")[:2].tolist())

    img, txt = image.reshape(3, 4), text.reshape(3, 4)
    boots = {
        "j": [len(top2(img[i].mean(0)) & top2(txt[i].mean(0)))
              / len(top2(img[i].mean(0)) | top2(txt[i].mean(0))) for i in idx],
        "rho": [np.corrcoef(np.argsort(np.argsort(img[i].mean(0))),
                            np.argsort(np.argsort(txt[i].mean(0))))[0, 1] for i in idx],
        "per": [np.array([1 / 3, 1 / 3, 0.0])[i].mean() for i in idx]}
    for est, name in ((j, "j"), (rho, "rho"), (per, "per")):
        lo, hi = np.quantile(boots[name], [0.025, 0.975])
        assert (est.low, est.high) == pytest.approx((lo, hi)), name
    assert rho.value == pytest.approx(np.corrcoef([3, 2, 1, 0], [0, 2, 3, 1])[0, 1])
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\], got 4"):
        compare_maps(image, text, k=4)


def test_result_top_heads_unique_heads_and_frame_by_hand():
    """Mean maps (2 layers x 3 heads) ``[[5, 3, 1], [0, 4, 2]]`` and ``[[1, 6, 0], [2, 5, 3]]``
    with k = 2: image top (0, 0), (1, 1); text top (0, 1), (1, 1); shared (1, 1). A flat index
    ``i`` is head ``(i // 3, i % 3)`` and a rank is the position in the descending order (not
    the order itself: neither permutation is its own inverse).
    Fails with ``divmod`` by the number of layers, the sort order used as ranks, or the
    unique text heads taken from the image's."""
    image = torch.tensor([[5.0, 3, 1, 0, 4, 2]]).repeat(2, 1).reshape(2, 2, 3)
    image[0] += 1.0
    image[1] -= 1.0  # the mean over examples is the map above
    text = torch.tensor([[1.0, 6, 0, 2, 5, 3]]).reshape(1, 2, 3)
    res = TextVsImageResult(SimpleNamespace(importance=image, layer_kinds=None),
                            SimpleNamespace(importance=text, layer_kinds=None),
                            2, None, 0.0, None, None)
    assert res.top_heads() == {"image": [(0, 0), (1, 1)], "text only": [(0, 1), (1, 1)]}
    assert res.unique_heads() == {"image only": [(0, 0)], "text only": [(0, 1)],
                                  "shared": [(1, 1)]}
    frame = res.to_frame()
    assert frame["layer"].tolist() == [0, 0, 0, 1, 1, 1] and frame["head"].tolist() == [0, 1, 2] * 2
    assert frame.image_rank.tolist() == [0, 2, 4, 5, 1, 3]
    assert frame.text_rank.tolist() == [4, 0, 5, 3, 1, 2]
    assert frame.image_top_k.tolist() == [True, False, False, False, True, False]
    np.testing.assert_allclose(frame.text_importance, [1, 6, 0, 2, 5, 3])
