"""Text-only vs image circuits: description spans, overlap statistics, an end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvlm_lens import AttributionConfig
from lvlm_lens.analysis import TextVsImageConfig, span_group, text_vs_image
from lvlm_lens.analysis.text_vs_image import compare_maps, random_jaccard
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
