"""Activation patching wrappers on clean/corrupted LVLMInput pairs."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.interventions.metrics import answer_logprob
from lvlm_lens.interventions.patching import (
    patch_attn_heads,
    patch_metric,
    patch_mlp_out,
    patch_resid,
)
from tests.helpers import PROMPTS, noise_image


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("llava-onevision-qwen2"))


@pytest.fixture(scope="module")
def pair(model):
    clean = model.prepare(noise_image(20, 28, 1), PROMPTS[1], answers="star")
    corrupted = model.prepare(noise_image(20, 28, 7), PROMPTS[1], answers="star")
    return clean, corrupted


def metric_of(inp):
    return lambda logits: answer_logprob(logits[:, -1], inp.answer_ids).mean()


def test_entries_equal_hand_made_patches(model, pair):
    clean, corrupted = pair
    metric = metric_of(clean)
    _, cache = model.run_with_cache(clean)
    m_clean, m_corr = metric(model(clean)), metric(model(corrupted))
    assert abs(m_clean - m_corr) > 1e-3  # the image matters

    def by_hand(name, index):
        def hook(act, hook):
            act[index] = cache[name][index]
            return act

        with torch.no_grad():
            return metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)]))

    n_layers, n_heads, n_pos = model.cfg.n_layers, model.cfg.n_heads, corrupted.shape[1]
    pos = int(corrupted.positions("image")[4])
    resid = patch_resid(model, clean, corrupted, metric, normalize=False)
    assert resid.shape == (n_layers, n_pos)
    assert torch.allclose(resid[1, pos], by_hand("blocks.1.hook_resid_pre", (slice(None), pos)))
    mlp = patch_mlp_out(model, clean, corrupted, metric, normalize=False)
    assert mlp.shape == (n_layers, n_pos)
    assert torch.allclose(mlp[0, pos], by_hand("blocks.0.hook_mlp_out", (slice(None), pos)))
    heads = patch_attn_heads(model, clean, corrupted, metric, normalize=False)
    assert heads.shape == (n_layers, n_heads)
    z = (slice(None), slice(None), 2)
    assert torch.allclose(heads[1, 2], by_hand("blocks.1.attn.hook_z", z))
    # normalisation (the default)
    normed = patch_attn_heads(model, clean, corrupted, metric)
    assert torch.allclose(normed, (heads - m_corr) / (m_clean - m_corr), atol=1e-5)
    normed = patch_mlp_out(model, clean, corrupted, metric)
    assert torch.allclose(normed, (mlp - m_corr) / (m_clean - m_corr), atol=1e-4)


def test_patching_everything_at_layer_0_recovers_clean(model, pair):
    clean, corrupted = pair
    resid = patch_resid(model, clean, corrupted, "logprob")
    # positions before the image are identical in both runs: patching them does nothing
    first_image = int(corrupted.positions("image")[0])
    assert resid[:, :first_image].abs().max() < 1e-4
    # at layer 0 only image positions differ; some of them matter
    image = corrupted.groups["image"][0]
    assert resid[0, ~image].abs().max() < 1e-4
    assert resid[0, image].abs().max() > 1e-3

    _, cache = model.run_with_cache(clean)
    everything = [("blocks.0.hook_resid_pre", lambda act, hook: cache[hook.name])]
    metric = metric_of(clean)
    with torch.no_grad():
        recovered = metric(model.run_with_hooks(corrupted, fwd_hooks=everything))
    assert torch.allclose(recovered, metric(model(clean)), atol=1e-5)


def test_text_corruption_with_same_length(model):
    clean = model.prepare(noise_image(20, 28, 1), "USER: <image>\nwhat is this ? ASSISTANT:")
    corrupted = model.prepare(noise_image(20, 28, 1), "USER: <image>\nwhat is that ? ASSISTANT:")
    clean.answer_ids = torch.tensor([model.to_single_token("star")])
    (d,) = (clean.input_ids[0] != corrupted.input_ids[0]).nonzero()[:, 0].tolist()
    resid = patch_resid(model, clean, corrupted, "logit", normalize=False)
    with torch.no_grad():
        m_clean, m_corr = (model(x)[0, -1, clean.answer_ids[0]] for x in (clean, corrupted))
    assert abs(float(m_clean - m_corr)) > 1e-3
    # before the changed word the runs agree; the changed word's layer-0 input is all that differs
    assert torch.allclose(resid[:, :d], m_corr.expand(model.cfg.n_layers, d), atol=1e-5)
    assert torch.allclose(resid[0, d], m_clean, atol=1e-5)


def test_mismatched_inputs_raise(model, pair):
    clean, _ = pair
    longer = model.prepare(noise_image(20, 28, 1), PROMPTS[0], answers="star")
    metric = metric_of(clean)
    with pytest.raises(ValueError, match="same shape.*same image-token count"):
        patch_resid(model, clean, longer, metric)
    batch = model.prepare([noise_image(20, 28, 1)] * 2, PROMPTS, answers=["star"] * 2)
    swapped = model.prepare([noise_image(20, 28, 1)] * 2, PROMPTS[::-1], answers=["star"] * 2)
    assert batch.shape == swapped.shape
    with pytest.raises(ValueError, match="same padding"):
        patch_resid(model, batch, swapped, "logit")
    no_answers = model.prepare(noise_image(20, 28, 1), PROMPTS[1])
    with pytest.raises(ValueError, match="needs clean.answer_ids"):
        patch_resid(model, no_answers, no_answers, "logit")
    with pytest.raises(ValueError, match="cannot normalise"):
        patch_resid(model, clean, clean, metric)
    with pytest.raises(KeyError, match="known metrics"):
        patch_resid(model, clean, clean, "accuracy")


def test_named_metric_on_a_batch_of_two_is_the_batch_mean(model):
    """A metric name means the batch mean of that metric at the final position, with each
    example's own answer (hand-computed from plain runs)."""
    images = [noise_image(20, 28, 1), noise_image(20, 28, 2)]
    others = [noise_image(20, 28, 7), noise_image(20, 28, 8)]
    clean = model.prepare(images, [PROMPTS[1]] * 2, answers=["star", "circle"])
    corrupted = model.prepare(others, [PROMPTS[1]] * 2, answers=["star", "circle"])
    rows, answers = torch.arange(2), clean.answer_ids
    with torch.no_grad():
        by_hand_corrupted = model(corrupted)[rows, -1, answers].mean()
        by_hand_clean = model(clean)[rows, -1, answers].mean()
    raw = patch_resid(model, clean, corrupted, "logit", normalize=False)
    first_image = int(corrupted.positions("image")[0])
    # before the image both runs are identical: the patched run is the corrupted run
    assert torch.allclose(raw[:, :first_image], by_hand_corrupted.expand_as(raw[:, :first_image]),
                          atol=1e-5)  # fmt: skip
    assert abs(float(by_hand_clean - by_hand_corrupted)) > 1e-3
    # normalised: (patched - corrupted) / (clean - corrupted), whichever sign the gap has
    raw_heads = patch_attn_heads(model, clean, corrupted, "logit", normalize=False)
    want = (raw_heads - by_hand_corrupted) / (by_hand_clean - by_hand_corrupted)
    assert torch.allclose(patch_attn_heads(model, clean, corrupted, "logit"), want, atol=1e-4)
    negated = lambda logits: -patch_metric("logit", clean)(logits)  # noqa: E731
    assert torch.allclose(patch_attn_heads(model, clean, corrupted, negated), want, atol=1e-4)
