"""Qwen3-VL-MoE: the sparse MLP's routing hooks against HF's router, each expert's output by
hand from the weight views, re-routing by editing the chosen experts, dense layers beside
sparse ones, and the tokens of a padded batch = the processor's expansion rule."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.model.blocks import GatedMLP
from lvlm_lens.model.families import language_model
from lvlm_lens.model.moe import SparseMoE
from tests.helpers import PROMPTS, noise_image

IMAGES = [noise_image(20, 28, 1), noise_image(30, 14, 2)]


@pytest.fixture(scope="module")
def moe(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen3-vl-moe", chat_template=True))
    return model, model.prepare(IMAGES, PROMPTS)


def by_hand(mlp: SparseMoE, x: torch.Tensor, index: torch.Tensor, probs: torch.Tensor):
    """Each chosen expert's weighted output ``[batch, pos, k, d_model]`` from ``W_gate``,
    ``W_in``, ``W_out`` and the renormalised probabilities of the chosen experts."""
    w = probs.gather(-1, index)
    w = w / w.sum(-1, keepdim=True)
    gate = torch.einsum("bsd,bskdm->bskm", x, mlp.W_gate[index])
    up = torch.einsum("bsd,bskdm->bskm", x, mlp.W_in[index])
    h = torch.nn.functional.silu(gate) * up
    return torch.einsum("bskm,bskmd->bskd", h, mlp.W_out[index]) * w[..., None]


def test_router_hooks_are_hfs_router(moe):
    model, inp = moe
    seen = []
    gates = [layer.mlp.gate for layer in language_model(model.hf_model).layers]
    handles = [g.register_forward_hook(lambda m, a, out: seen.append(out)) for g in gates]
    try:
        with torch.no_grad():
            model.hf_model(**inp.to_hf())
    finally:
        for h in handles:
            h.remove()
    _, cache = model.run_with_cache(inp)
    real = inp.attention_mask.bool().flatten()
    assert model.cfg.decoder.moe.layers == (0, 1)
    for layer, (logits, scores, index) in enumerate(seen):
        ours = cache[f"blocks.{layer}.mlp.hook_router_logits"].flatten(0, 1)
        assert (ours - logits)[real].abs().max() <= 1e-5
        chosen = cache[f"blocks.{layer}.mlp.hook_expert_indices"].flatten(0, 1)
        assert torch.equal(chosen[real], index[real])
        probs = cache[f"blocks.{layer}.mlp.hook_expert_weights"]
        assert torch.allclose(probs.sum(-1), torch.ones(()))
        top = probs.flatten(0, 1).gather(-1, chosen)  # HF's weights: the renormalised top-k
        assert (top / top.sum(-1, keepdim=True) - scores)[real].abs().max() <= 1e-6
    assert len(torch.unique(cache["blocks.0.mlp.hook_expert_indices"])) > 2


def test_each_experts_output_by_hand_and_their_sum_is_the_mlp_output(moe):
    model, inp = moe
    _, cache = model.run_with_cache(inp)
    for layer, block in enumerate(model.blocks):
        x = cache[f"blocks.{layer}.ln2.hook_normalized"]
        index = cache[f"blocks.{layer}.mlp.hook_expert_indices"]
        probs = cache[f"blocks.{layer}.mlp.hook_expert_weights"]
        per = cache[f"blocks.{layer}.mlp.hook_expert_out"]
        assert per.shape == (*inp.shape, 2, model.cfg.d_model)
        assert (per - by_hand(block.mlp, x, index, probs)).abs().max() <= 1e-5
        total = cache[f"blocks.{layer}.hook_mlp_out"] - (
            cache[f"blocks.{layer}.hook_deepstack"] if layer < 2 else 0)
        assert (per.sum(2) - total).abs().max() <= 1e-5


def test_editing_the_chosen_experts_reroutes_the_tokens(moe):
    model, inp = moe
    fixed = torch.tensor([5, 2])

    def route(index, hook):
        return fixed.expand_as(index)

    with model.hooks(fwd_hooks=[("blocks.1.mlp.hook_expert_indices", route)]):
        logits, cache = model.run_with_cache(inp)
    x = cache["blocks.1.ln2.hook_normalized"]
    probs = cache["blocks.1.mlp.hook_expert_weights"]
    expected = by_hand(model.blocks[1].mlp, x, fixed.expand(*inp.shape, 2), probs)
    assert (cache["blocks.1.mlp.hook_expert_out"] - expected).abs().max() <= 1e-5
    real = inp.attention_mask.bool()
    assert (logits - model(inp))[real].abs().max() > 1e-3


def test_dense_layers_beside_sparse_ones_match_hf(tiny_checkpoint):
    folder = tiny_checkpoint("qwen3-vl-moe", mlp_only_layers=[0])
    model = HookedLVLM.from_pretrained(folder)
    assert isinstance(model.blocks[0].mlp, GatedMLP) and isinstance(model.blocks[1].mlp, SparseMoE)
    inp = model.prepare(IMAGES, PROMPTS)
    reference = type(model.hf_model).from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = reference(**inp.to_hf()).logits
    real = inp.attention_mask.bool()
    assert (model(inp) - ref)[real].abs().max() <= 1e-4 and ref[real].std() > 0.1


def test_batch_tokens_are_the_processor_expansion(moe):
    """Qwen3-VL's processor needs torchvision (its video processor); its rule: each
    ``<|image_pad|>`` becomes ``grid.prod() // merge**2`` copies."""
    model, inp = moe
    assert (inp.attention_mask == 0).any()
    for i in range(2):
        n = int(inp.image_grid[i].prod() // 4)
        expected = model.tokenizer(inp.texts[i].replace("<|image_pad|>", "<|image_pad|>" * n))
        assert inp.input_ids[i][inp.attention_mask[i].bool()].tolist() == expected.input_ids


def test_bf16_equals_hf_bf16_bit_for_bit(tiny_checkpoint):
    """With the materialised attention (HF's rounding) bf16 logits are HF's exactly: the
    routing, the experts and their sum in HF's order round as HF's. (The fused kernel sums in
    another order, and a bf16 difference may flip a token's top-k choice.)"""
    folder = tiny_checkpoint("qwen3-vl-moe")
    model = HookedLVLM.from_pretrained(folder, dtype="bfloat16")
    model.cfg.fused_attention = False
    reference = type(model.hf_model).from_pretrained(
        folder, attn_implementation="eager", dtype=torch.bfloat16
    ).eval()
    inp = model.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        logits, ref = model(inp), reference(**inp.to_hf()).logits
    real = inp.attention_mask.bool()
    assert ref[real].float().std() > 0.1 and torch.equal(logits[real], ref[real])
