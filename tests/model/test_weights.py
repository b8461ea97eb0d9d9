"""TransformerLens-shaped weights: stacks over layers, GQA per query head, QK/OV circuits."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.FactoredMatrix import FactoredMatrix

from lvlm_lens import HookedLVLM
from tests.helpers import PROMPTS, noise_image


@pytest.fixture(scope="module", params=["llava-onevision-qwen2", "llava-llama"])
def model(request, tiny_checkpoint):  # GQA (2 query heads per K/V head) with q/k/v biases; MHA
    return HookedLVLM.from_pretrained(tiny_checkpoint(request.param))


def test_stacks_are_the_hf_weights_per_query_head(model):
    c = model.cfg
    d, g = c.d_head, c.n_heads // c.n_key_value_heads
    W = {n: getattr(model, n) for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")}
    for n in ("W_Q", "W_K", "W_V"):
        assert W[n].shape == (c.n_layers, c.n_heads, c.d_model, d)
    assert W["W_O"].shape == (c.n_layers, c.n_heads, d, c.d_model)
    assert model._W_K.shape == (c.n_layers, c.n_key_value_heads, c.d_model, d)
    zeros = lambda n: torch.zeros(n)  # noqa: E731
    for layer, hf in enumerate(model.hf_model.model.language_model.layers):
        at, mlp = hf.self_attn, hf.mlp
        for h in range(c.n_heads):
            q, kv = slice(h * d, (h + 1) * d), slice(h // g * d, (h // g + 1) * d)
            assert torch.equal(W["W_Q"][layer, h], at.q_proj.weight[q].T)
            assert torch.equal(W["W_K"][layer, h], at.k_proj.weight[kv].T)
            assert torch.equal(W["W_V"][layer, h], at.v_proj.weight[kv].T)
            assert torch.equal(W["W_O"][layer, h], at.o_proj.weight[:, q].T)
            biases = (("b_Q", at.q_proj, q), ("b_K", at.k_proj, kv), ("b_V", at.v_proj, kv))
            for n, proj, sl in biases:
                want = zeros(d) if proj.bias is None else proj.bias[sl]
                assert torch.equal(W[n][layer, h], want)
        assert torch.equal(model.W_K[layer, ::g], model._W_K[layer])
        assert torch.equal(W["b_O"][layer], zeros(c.d_model))
        assert torch.equal(model.W_in[layer], mlp.up_proj.weight.T)
        assert torch.equal(model.W_gate[layer], mlp.gate_proj.weight.T)
        assert torch.equal(model.W_out[layer], mlp.down_proj.weight.T)
        assert torch.equal(model.b_in[layer], zeros(c.d_mlp))
        assert torch.equal(model.b_out[layer], zeros(c.d_model))
    assert torch.equal(model.W_E, model.hf_model.model.language_model.embed_tokens.weight)
    assert torch.equal(model.W_U, model.hf_model.lm_head.weight.T)
    assert torch.equal(model.b_U, zeros(model.W_U.shape[1]))


def test_weights_reproduce_the_hooked_activations(model):
    """``q = ln1(x) @ W_Q + b_Q``, ``k`` of query head h via ``W_K[l, h]``, ``attn_out`` via W_O."""
    inp = model.prepare(noise_image(20, 20), PROMPTS[0])
    _, cache = model.run_with_cache(inp)
    g = model.cfg.n_heads // model.cfg.n_key_value_heads
    for layer in range(model.cfg.n_layers):
        x = cache[f"blocks.{layer}.ln1.hook_normalized"][0]
        q = torch.einsum("pm,hmd->phd", x, model.W_Q[layer]) + model.b_Q[layer]
        k = torch.einsum("pm,hmd->phd", x, model.W_K[layer]) + model.b_K[layer]
        v = torch.einsum("pm,hmd->phd", x, model.W_V[layer]) + model.b_V[layer]
        hook_k = cache[f"blocks.{layer}.attn.hook_k"][0].repeat_interleave(g, dim=1)
        hook_v = cache[f"blocks.{layer}.attn.hook_v"][0].repeat_interleave(g, dim=1)
        assert (q - cache[f"blocks.{layer}.attn.hook_q"][0]).abs().max() <= 1e-5
        assert (k - hook_k).abs().max() <= 1e-5 and (v - hook_v).abs().max() <= 1e-5
        z = cache[f"blocks.{layer}.attn.hook_z"][0]
        out = torch.einsum("phd,hdm->pm", z, model.W_O[layer]) + model.b_O[layer]
        assert (out - cache[f"blocks.{layer}.hook_attn_out"][0]).abs().max() <= 1e-5


def test_qk_and_ov_circuits(model):
    c = model.cfg
    qk, ov = model.QK, model.OV
    assert isinstance(qk, FactoredMatrix) and isinstance(ov, FactoredMatrix)
    assert qk.shape == ov.shape == (c.n_layers, c.n_heads, c.d_model, c.d_model)
    assert torch.allclose(qk.AB, model.W_Q @ model.W_K.transpose(-2, -1), atol=1e-6)
    assert torch.allclose(ov.AB, model.W_V @ model.W_O, atol=1e-6)
    last = c.n_heads - 1  # reads the last K/V head under GQA
    block = model.blocks[1].attn
    assert torch.allclose(block.QK.AB[last], qk.AB[1, last]) and block.OV.shape == ov.shape[1:]
    assert torch.allclose(qk.AB[1, last], block.W_Q[last] @ block._W_K[-1].T, atol=1e-6)


def test_tied_embeddings_share_the_unembedding(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(
        tiny_checkpoint("llava-onevision-qwen2", tie_word_embeddings=True)
    )
    assert torch.equal(model.W_U, model.W_E.T)
    assert model.W_U.data_ptr() == model.W_E.data_ptr()
