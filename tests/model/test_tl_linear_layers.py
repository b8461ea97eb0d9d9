"""TransformerLens' analysis tools on Qwen3.5's mixed layers: on a Gated-DeltaNet
(linear-attention) layer ``detect_head``, ``SVDInterpreter`` and ``attn.W_Q`` fail with one
line naming the layer and the full-attention layers to pick (not TL's bare
``KeyError: blocks.0.attn.hook_pattern`` or ``GatedDeltaNet has no W_Q``); on the
full-attention layers they give the answer computed by hand.
"""

from __future__ import annotations

import re

import pytest
import torch
from transformer_lens import SVDInterpreter, head_detector

from lvlm_lens import HookedLVLM
from tests.model.test_tl_analysis import pattern_by_definition, same_up_to_sign
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


@parity(**LINEAR_ROW)
def test_detect_head_refuses_a_linear_layer_in_one_line(model):
    with pytest.raises(KeyError) as err:
        head_detector.detect_head(model, "the cat sat on the cat", "previous_token_head")
    assert re.match(refusal(0, "hook_pattern"), str(err.value))  # str: one line, unquoted


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
