"""TransformerLens' analysis tools on Qwen3.5's mixed layers: on a Gated-DeltaNet
(linear-attention) layer picked by name ``detect_head``, ``SVDInterpreter``, ``attn.W_Q`` and
the patching sweeps fail with one line naming the layer and the full-attention layers to pick
(not TL's bare ``KeyError: blocks.0.attn.hook_pattern`` or ``GatedDeltaNet has no W_Q``); in a
sweep over every layer a linear layer's rows are NaN; on the full-attention layers they give
the answer computed by hand.
"""

from __future__ import annotations

import re
from contextlib import nullcontext

import pandas as pd
import pytest
import torch
from transformer_lens import SVDInterpreter, head_detector, patching

from lvlm_lens import HookedLVLM
from tests.model.test_tl_analysis import (  # noqa: F401 (test_prompt's test collected here again)
    image_input,
    pattern_by_definition,
    same_up_to_sign,
    test_test_prompt_ranks_are_the_models_ranks,
)
from tests.model.tl_parity import parity

#: The tiny Qwen3.5's layer types: linear, full, linear, full.
LINEAR, FULL = [0, 2], [1, 3]


LINEAR_ROW = dict(
    api="detect_head / SVDInterpreter / attn.W_Q ... on a linear-attention layer (Qwen3.5)",
    status="differs",
    note="a Gated-DeltaNet layer has no pattern or per-head Q/K/V: refused in one line naming "
    "the layer and listing the full-attention layers; on those they work "
    "(detect_head(..., heads={layer: heads}) scores them, the rest stay -1)")


def refusal(layer, what):
    return (rf"blocks\.{layer}\.attn\.{what}: layer {layer} is a linear-attention "
            rf"\(Gated-DeltaNet\) layer, which has no {what}; pick a full-attention layer: "
            rf"\[1, 3\]$")  # fmt: skip


@pytest.fixture(scope="module", params=["qwen3.5", "qwen3.5-moe"])
def model(request, tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint(request.param))


SWEEP_ROW = dict(
    api="detect_head / patching head sweeps over every layer (Qwen3.5)",
    status="differs",
    note="detect_head without heads=, get_act_patch_attn_head_* without index_df and the "
    "direct-path sweeps give NaN rows for the linear-attention layers (no attention heads; "
    "never a number read as a score), TL's numbers for the full-attention ones; a linear "
    "layer picked (heads=, index_df, a direct-path source) is refused in one line, and so "
    "is detect_head(error_measure='abs') over every layer (TL's check refuses a NaN pattern)")


@parity(**LINEAR_ROW)
def test_detect_head_refuses_a_linear_layer_in_one_line(model):
    seq = "the cat sat on the cat"
    with pytest.raises(KeyError) as err:
        head_detector.detect_head(model, seq, "previous_token_head", heads={0: [0]})
    assert re.match(refusal(0, "hook_pattern"), str(err.value))  # str: one line, unquoted
    with pytest.raises(KeyError, match=r"hook_pattern.*error_measure='mul'$"):
        head_detector.detect_head(model, seq, "previous_token_head", error_measure="abs")


@parity(**SWEEP_ROW)
@pytest.mark.parametrize("kind", ["text", "image"])
@pytest.mark.parametrize("name", ["previous_token_head", "duplicate_token_head"])
def test_detect_head_over_every_layer_has_nan_linear_rows(model, name, kind):
    seq = "the cat sat on the cat" if kind == "text" else image_input(model)
    with model.bind(seq) if kind == "image" else nullcontext():  # its image with its ids
        got = head_detector.detect_head(model, seq, name, exclude_bos=True)
    assert got.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert got[LINEAR].isnan().all()
    det = pattern_by_definition(name, model.to_tokens(seq)[0].tolist())
    assert det.sum() > 0
    _, cache = model.run_with_cache(seq, remove_batch_dim=True)
    for layer in FULL:
        for h in range(model.cfg.n_heads):
            p = cache[f"blocks.{layer}.attn.hook_pattern"][h].float().clone()
            p[:, 0] = 0  # exclude_bos
            assert got[layer, h] == pytest.approx(((p * det).sum() / p.sum()).item(), abs=1e-5)
    with pytest.raises(KeyError, match=refusal(0, "hook_pattern")):  # the cache alone: refused
        cache["pattern", 0, "attn"]


def pair(model, kind):
    if kind == "text":
        return model.to_tokens("the cat sat on the mat"), model.to_tokens("the dog sat on the rug")
    return image_input(model, 3), image_input(model, 4)


@parity(**SWEEP_ROW)
@pytest.mark.parametrize("kind", ["text", "image"])
def test_head_patching_sweeps_have_nan_linear_rows(model, kind):
    clean, corrupt = pair(model, kind)
    _, clean_cache = model.run_with_cache(clean)

    def metric(logits):
        return logits[0, -1, 3]

    n, h = model.cfg.n_layers, model.cfg.n_heads
    for point, sweep in [("z", patching.get_act_patch_attn_head_out_all_pos),
                         ("q", patching.get_act_patch_attn_head_q_all_pos),
                         ("pattern", patching.get_act_patch_attn_head_pattern_all_pos)]:
        got = sweep(model, corrupt, clean_cache, metric)
        assert got.shape == (n, h) and got[LINEAR].isnan().all()
        for layer, head in [(FULL[0], 0), (FULL[-1], h - 1)]:
            name = f"blocks.{layer}.attn.hook_{point}"

            def put(act, hook, name=name, head=head, point=point):
                axis = 1 if point == "pattern" else 2  # pattern: [batch, head, q, k]
                idx = (slice(None),) * axis + (head,)
                act = act.clone()
                act[idx] = clean_cache[name][idx]
                return act

            with torch.no_grad():
                manual = metric(model.run_with_hooks(corrupt, fwd_hooks=[(name, put)]))
            assert float(got[layer, head]) == pytest.approx(float(manual), abs=1e-5)
    picked = pd.DataFrame({"layer": [0], "head": [0]})  # a linear layer by name: refused
    with pytest.raises(KeyError, match=r"blocks\.0\.attn\.hook_z: layer 0 is a linear-attention"):
        patching.generic_activation_patch(model, corrupt, clean_cache, metric,
                                          patching.layer_head_vector_patch_setter, "z",
                                          index_df=picked)
    # outside a sweep a linear layer's hook_z is a plain hook point
    assert torch.isfinite(model.run_with_hooks(corrupt, fwd_hooks=[
        ("blocks.0.attn.hook_z", lambda z, hook: z * 0)])).all()


@parity(**SWEEP_ROW)
@pytest.mark.parametrize("kind", ["text", "image"])
def test_direct_path_sweep_has_nan_linear_destinations(model, kind):
    clean, corrupt = pair(model, kind)
    _, clean_cache = model.run_with_cache(clean)
    logits, corrupt_cache = model.run_with_cache(corrupt)

    def metric(x):
        return x[0, -1, 3] - logits[0, -1, 3]

    src, src_head = FULL[0], 1
    got = patching.get_act_patch_direct_path(model, corrupt, clean_cache, corrupt_cache, metric,
                                             src, src_head, verbose=False)
    assert torch.equal(got[: src + 1], torch.zeros_like(got[: src + 1]))
    assert got[[la for la in LINEAR if la > src]].isnan().all()
    z = f"blocks.{src}.attn.hook_z"
    delta = (clean_cache[z][:, :, src_head] - corrupt_cache[z][:, :, src_head]) @ (
        model.blocks[src].attn.W_O[src_head])
    layer = FULL[-1]
    attn, x = model.blocks[layer].attn, corrupt_cache[f"blocks.{layer}.hook_resid_pre"]
    normed = model.blocks[layer].ln1(x + delta)
    for head in range(model.cfg.n_heads):
        # the query input feeds the head's query and its output gate (q_proj's gate rows)
        new_q = normed @ attn.W_Q[head] + attn.b_Q[head]
        new_g = normed @ attn.W_G[head] + attn.b_G[head]

        def put(new, head=head):
            def hook(t, hook):
                t = t.clone()
                t[:, :, head] = new
                return t
            return hook

        with torch.no_grad():
            by_hand = model.run_with_hooks(corrupt, fwd_hooks=[
                (f"blocks.{layer}.attn.hook_q", put(new_q)),
                (f"blocks.{layer}.attn.hook_gate", put(new_g))])
        assert float(got[layer, head]) == pytest.approx(float(metric(by_hand)), abs=1e-4)


@parity(**LINEAR_ROW)
def test_detect_head_scores_the_full_attention_layers(model):
    seq = "the cat sat on the cat"
    ids = model.to_tokens(seq)[0].tolist()
    name = "duplicate_token_head"
    heads = {layer: list(range(model.cfg.n_heads)) for layer in FULL}
    got = head_detector.detect_head(model, seq, name, heads=heads, exclude_bos=False,
                                    exclude_current_token=False, error_measure="mul")  # fmt: skip
    det = pattern_by_definition(name, ids)
    assert det.sum() > 0  # "cat" and "the" repeat
    _, cache = model.run_with_cache(seq, remove_batch_dim=True)
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            if layer in LINEAR:
                assert got[layer, h] == -1  # not scored
                continue
            p = cache[f"blocks.{layer}.attn.hook_pattern"][h].float()
            want = ((p * det).sum() / p.sum()).item()
            assert got[layer, h] == pytest.approx(want, abs=1e-5)


@parity(**LINEAR_ROW)
def test_svd_interpreter_refuses_a_linear_layer_and_reads_a_full_one(model):
    svd, k = SVDInterpreter(model), 3
    for layer in LINEAR:
        with pytest.raises(KeyError, match=refusal(layer, "W_V")):
            svd.get_singular_vectors("OV", layer, num_vectors=k, head_index=0)
    W_U = model.W_U
    for layer in FULL:
        attn = model.blocks[layer].attn
        for h in (0, model.cfg.n_heads - 1):
            got = svd.get_singular_vectors("OV", layer, num_vectors=k, head_index=h)
            ov = (attn.W_V[h] @ attn.W_O[h]).double()
            want = W_U.T @ torch.linalg.svd(ov)[2][:k].T.to(W_U.dtype)
            assert same_up_to_sign(got[:, 0], want)


@parity(**LINEAR_ROW)
@pytest.mark.parametrize("name", ["W_Q", "W_K", "W_V", "b_Q", "OV", "QK"])
def test_a_linear_layers_attention_weight_is_refused_in_one_line(model, name):
    with pytest.raises(AttributeError, match=refusal(0, name)):
        getattr(model.blocks[0].attn, name)
    assert not hasattr(model.blocks[2].attn, name)
    assert hasattr(model.blocks[1].attn, "W_Q")  # the full-attention layer's own


@parity(**SWEEP_ROW)
def test_direct_path_all_sources_has_nan_linear_source_rows(model):
    clean, corrupt = pair(model, "text")
    _, clean_cache = model.run_with_cache(clean)
    logits, corrupt_cache = model.run_with_cache(corrupt)

    def metric(x):
        return x[0, -1, 3] - logits[0, -1, 3]

    every = patching.get_act_patch_direct_path_all_sources(
        model, corrupt, clean_cache, corrupt_cache, metric, verbose=False)
    n = model.cfg.n_layers
    for src in range(n):
        later = every[src, :, src + 1:]
        assert torch.equal(every[src, :, : src + 1], torch.zeros_like(every[src, :, : src + 1]))
        if src in LINEAR:  # no attention head to patch a path from
            assert later.isnan().all()
        else:  # each full-attention source's row is its own sweep's
            one = patching.get_act_patch_direct_path(model, corrupt, clean_cache, corrupt_cache,
                                                     metric, src, 0, verbose=False)
            assert torch.allclose(every[src, 0], one, atol=1e-6, equal_nan=True)
    with pytest.raises(KeyError, match=r"blocks\.0\.attn\.hook_z: layer 0 is a linear-attention"):
        patching.get_act_patch_direct_path(model, corrupt, clean_cache, corrupt_cache, metric,
                                           0, 0, verbose=False)


#: ``stack_head_results`` labels and the full decomposition, on a Qwen3.5 whose linear layers
#: have more value heads than the model has attention heads (the real 32 : 16).
RESID_ROW = dict(
    api="ActivationCache.stack_head_results / get_full_resid_decomposition (Qwen3.5)",
    status="differs",
    note="a linear-attention layer's components are its value heads (z @ W_O per value head), "
    "labelled L{l}H{h} by their own count, where TL labels n_heads per layer and so "
    "misnames every later component; the decomposition sums to the residual stream (a "
    "DeltaNet's out_proj has no bias)")


@pytest.fixture(scope="module")
def wide(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("qwen3.5", linear_num_value_heads=8))


@parity(**RESID_ROW)
@pytest.mark.parametrize("kind", ["text", "image"])
def test_head_results_are_labelled_by_each_layers_heads(wide, kind):
    x = pair(wide, kind)[0]
    _, cache = wide.run_with_cache(x)
    stack, labels = cache.stack_head_results(return_labels=True, incl_remainder=True)
    assert len(labels) == stack.shape[0] and labels[-1] == "remainder"
    n_v = wide.cfg.decoder.linear_attention.n_v_heads
    assert n_v != wide.cfg.n_heads
    for i, label in enumerate(labels[:-1]):
        layer, head = map(int, re.match(r"^L(\d+)H(\d+)$", label).groups())
        z = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
        want = z @ wide.blocks[layer].attn.W_O[head]
        assert torch.allclose(stack[i], want, atol=1e-5)
    assert sum(label.startswith("L0H") for label in labels) == n_v
    parts, names = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
    assert len(names) == parts.shape[0] and names[-2:] == ["embed", "bias"]
    last = cache[f"blocks.{wide.cfg.n_layers - 1}.hook_resid_post"]
    assert torch.allclose(parts.sum(0), last, atol=1e-4)


@parity(api="all_composition_scores (Qwen3.5)", status="differs",
        note="[layer, head, layer, head] as TL, NaN wherever either layer is a "
        "linear-attention layer (no heads; the stacked model.W_Q ... stay refused), the "
        "Frobenius formula between full-attention heads, 0 where the first is not earlier")
@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_composition_scores_are_nan_on_linear_layers(model, mode):
    n, h = model.cfg.n_layers, model.cfg.n_heads
    scores = model.all_composition_scores(mode)
    assert scores.shape == (n, h, n, h)
    assert scores[LINEAR].isnan().all() and scores[:, :, LINEAR].isnan().all()
    for l1 in FULL:
        for l2 in FULL:
            a1, a2 = model.blocks[l1].attn, model.blocks[l2].attn
            for h1 in range(h):
                for h2 in range(h):
                    ov = a1.W_V[h1] @ a1.W_O[h1]
                    qk = a2.W_Q[h2] @ a2.W_K[h2].T
                    b = {"Q": qk, "K": qk.T, "V": a2.W_V[h2] @ a2.W_O[h2]}[mode]
                    want = (ov @ b).norm() / (ov.norm() * b.norm()) if l1 < l2 else 0.0
                    assert float(scores[l1, h1, l2, h2]) == pytest.approx(float(want), abs=1e-5)
