"""GLM-4.1V: what is new in its decoder (RoPE over adjacent pairs of the rotated half of each
head, 3-D positions, GLM's sandwich norms, the fused gate/up MLP), its tokens against HF's
processor logic, and its refusals; GLM-4.5V's sparse MLP (sigmoid router, choice bias,
group-limited choice, ungated shared MLP) against HF's. Logits, generation, engine and CLI
against HF run in the shared per-family tests (kinds ``glm4v``, ``glm4v-moe``)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from transformers.models.glm4v import Glm4vProcessor
from transformers.models.glm4v.modeling_glm4v import apply_rotary_pos_emb

from lvlm_lens import HookedLVLM
from lvlm_lens.model.attention import apply_rotary
from lvlm_lens.model.blocks import GatedMLP
from lvlm_lens.model.families import language_model
from lvlm_lens.model.moe import SparseMoE
from tests.helpers import PROMPTS, noise_image

IMAGES = [noise_image(20, 28, 1), noise_image(30, 18, 2)]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("glm4v", chat_template=True))


def hf_processor(model) -> Glm4vProcessor:
    """HF's ``Glm4vProcessor`` without its video processor (which needs torchvision): the
    attributes its image expansion and token types read, on the model's tokenizer and PIL
    image processor."""
    tok = model.tokenizer
    proc = object.__new__(Glm4vProcessor)
    proc.image_processor, proc.tokenizer = model.image_processor, tok
    proc.image_token, proc.video_token = "<|image|>", "<|video|>"
    proc.image_token_id = tok.convert_tokens_to_ids("<|image|>")
    proc.video_start_id = tok.convert_tokens_to_ids("<|begin_of_video|>")
    proc.video_end_id = tok.convert_tokens_to_ids("<|end_of_video|>")
    return proc


def test_tokens_and_pixels_are_hfs_processor(model):
    """A left-padded chat batch of two image sizes: HF's image expansion, tokenizer padding and
    token types give our ids, mask, pixels, grids and ``mm_token_type_ids``."""
    inp = model.prepare(IMAGES, ["what is this ?", "what is the main object ?"], template="chat")
    assert inp.texts[0] == ("<|user|>\n<|begin_of_image|><|image|><|end_of_image|>what is this ?"
                            "<|assistant|>\n")
    proc = hf_processor(model)
    processed, replacements = proc._process_images(IMAGES)
    texts, _ = proc.get_text_with_replacements(list(inp.texts), images_replacements=replacements)
    model.tokenizer.padding_side = "left"
    enc = model.tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(enc.input_ids, inp.input_ids)
    assert torch.equal(enc.attention_mask, inp.attention_mask)
    assert (inp.attention_mask == 0).any() and inp.groups["image"].sum(-1).tolist() == [35, 32]
    assert torch.equal(torch.as_tensor(processed["image_grid_thw"]), inp.image_grid)
    assert torch.equal(torch.as_tensor(processed["pixel_values"]), inp.pixel_values)
    types = torch.tensor(proc.create_mm_token_type_ids(enc.input_ids.tolist()))
    assert torch.equal(types, inp.to_hf()["mm_token_type_ids"])


def test_rotary_pairs_is_hfs_partial_pair_rotation():
    """Against HF's ``apply_rotary_pos_emb`` on HF-shaped tables (each frequency twice in a row,
    half of ``d_head`` rotated), and by hand: a pair ``(1, 0)`` rotated by ``a`` is
    ``(cos a, sin a)``, the unrotated half passes unchanged."""
    torch.manual_seed(0)
    q = torch.randn(2, 5, 3, 16)
    angles = torch.rand(2, 5, 4) * 6
    cos, sin = (f(angles).repeat_interleave(2, dim=-1) for f in (torch.cos, torch.sin))
    ours = apply_rotary(q, cos, sin, pairs=True)
    theirs, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos, sin)
    assert torch.equal(ours, theirs.transpose(1, 2))
    x = torch.zeros(1, 1, 1, 16)
    x[..., 2], x[..., 12] = 1.0, 5.0  # the second pair; a dimension of the unrotated half
    a = torch.tensor([0.1, 0.7, 1.3, 2.0])
    out = apply_rotary(x, a.cos().repeat_interleave(2)[None, None], a.sin().repeat_interleave(2)[
        None, None], pairs=True)[0, 0, 0]
    expected = torch.zeros(16)
    expected[2], expected[3], expected[12] = math.cos(0.7), math.sin(0.7), 5.0
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(apply_rotary(q, cos, sin), ours)  # the halves convention differs


def test_3d_positions_of_image_tokens(model):
    """Image tokens take ``(start, start + row, start + col)``; the text after an image
    continues at ``start + max(rows, cols)``, as HF's ``get_rope_index``."""
    inp = model.prepare(IMAGES, PROMPTS)
    pos, image = inp.position_ids, inp.groups["image"]
    assert pos.shape == (3, *inp.shape)
    for i in range(2):
        coords = torch.cat(inp.image_coords[inp.image_slice(i)])
        start = int(pos[0, i][image[i]][0])
        assert (pos[0, i][image[i]] == start).all()
        assert torch.equal(pos[1, i][image[i]] - start, coords[:, 1])
        assert torch.equal(pos[2, i][image[i]] - start, coords[:, 2])
        after = int(image[i].nonzero().max()) + 1
        rows, cols = int(coords[:, 1].max()) + 1, int(coords[:, 2].max()) + 1
        assert (pos[:, i, after] == start + max(rows, cols)).all()


def test_pair_rotation_and_3d_positions_matter(model):
    """The HF equality is not vacuous: the halves convention, or 1-D positions, change the
    logits."""
    inp = model.prepare(IMAGES, PROMPTS)
    real = inp.attention_mask.bool()
    base = model(inp)
    spec = model.cfg.decoder
    try:
        model.cfg.decoder = replace(spec, rotary_pairs=False)
        halves = model(inp)
    finally:
        model.cfg.decoder = spec
    assert (halves - base)[real].abs().max() > 1e-3
    flat = replace(inp, position_ids=None)
    assert (model(flat) - base)[real].abs().max() > 1e-3


def test_sandwich_norms_and_fused_mlp_are_glms(model):
    """``ln1_post`` / ``ln2`` / ``ln2_post`` are HF's ``post_self_attn_layernorm`` /
    ``post_attention_layernorm`` / ``post_mlp_layernorm``; ``W_gate`` / ``W_in`` are the two
    halves of ``gate_up_proj`` and the MLP hooks hold ``x @ W_gate`` and ``x @ W_in``."""
    hf_layer = language_model(model.hf_model).layers[1]
    block = model.blocks[1]
    assert block.ln1_post.w is hf_layer.post_self_attn_layernorm.weight
    assert block.ln2.w is hf_layer.post_attention_layernorm.weight
    assert block.ln2_post.w is hf_layer.post_mlp_layernorm.weight
    w = hf_layer.mlp.gate_up_proj.weight
    d_mlp = model.cfg.d_mlp
    assert torch.equal(model.W_gate[1], w[:d_mlp].T) and torch.equal(model.W_in[1], w[d_mlp:].T)
    assert (model.b_in == 0).all()
    inp = model.prepare(IMAGES, PROMPTS)
    _, cache = model.run_with_cache(inp, names_filter=lambda n: n.startswith("blocks.1."))
    x = cache["blocks.1.ln2.hook_normalized"]
    assert torch.allclose(cache["blocks.1.mlp.hook_pre"], x @ model.W_gate[1], atol=1e-5)
    assert torch.allclose(cache["blocks.1.mlp.hook_pre_linear"], x @ model.W_in[1], atol=1e-5)
    mlp_out = cache["blocks.1.hook_mlp_out"]
    assert torch.allclose(mlp_out, cache["blocks.1.ln2_post.hook_normalized"])
    resid = cache["blocks.1.hook_resid_mid"] + mlp_out
    assert torch.allclose(cache["blocks.1.hook_resid_post"], resid)


@pytest.mark.parametrize("marker", ["<|video|>", "<|begin_of_video|>", "<|end_of_video|>"])
def test_video_is_refused(model, marker):
    with pytest.raises(ValueError, match="video input is not supported"):
        model.prepare(IMAGES[:1], f"<|user|>\n<image>{marker} what is this ?<|assistant|>\n")


@pytest.fixture(scope="module")
def moe(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("glm4v-moe", chat_template=True))
    return model, model.prepare(IMAGES, PROMPTS)


def test_glm4v_moe_router_is_hfs(moe):
    """GLM-4.5V's sparse layer: the router logits are HF's, the chosen experts and their
    (renormalised, scaled) weights are HF's per token, and with one eligible group of the two
    every token's experts lie in one group; the choice bias and the groups change the choice
    of the plain top-k somewhere, so they are not vacuous."""
    model, inp = moe
    assert isinstance(model.blocks[0].mlp, GatedMLP)  # first_k_dense_replace = 1
    mlp = model.blocks[1].mlp
    assert isinstance(mlp, SparseMoE)
    assert mlp.router.e_score_correction_bias.abs().min() > 0
    seen = []
    gate = language_model(model.hf_model).layers[1].mlp.gate
    handle = gate.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            model.hf_model(**inp.to_hf())
    finally:
        handle.remove()
    hf_logits, hf_weights, hf_index = seen[0]
    names = ["router_logits", "expert_weights", "expert_indices"]
    _, cache = model.run_with_cache(inp, names_filter=[f"blocks.1.mlp.hook_{n}" for n in names])
    real = inp.attention_mask.bool()
    logits = cache["blocks.1.mlp.hook_router_logits"][real]
    flat_real = real.flatten()
    assert torch.allclose(logits, hf_logits[flat_real], atol=1e-5)
    ours = cache["blocks.1.mlp.hook_expert_indices"][real]
    theirs, order = hf_index[flat_real].sort(-1)
    assert torch.equal(ours.sort(-1).values, theirs)
    probs = cache["blocks.1.mlp.hook_expert_weights"][real]
    weight = probs.gather(-1, ours)
    weight = weight / weight.sum(-1, keepdim=True) * 2.5
    assert torch.allclose(weight.gather(-1, ours.argsort(-1)), hf_weights[flat_real].gather(
        -1, order), atol=1e-6)
    groups = ours // 4  # 8 experts in 2 groups of 4
    assert (groups == groups[:, :1]).all()
    plain = probs.topk(2, dim=-1).indices.sort(-1).values
    assert (plain != ours.sort(-1).values).any()


def test_glm4v_moe_shared_mlp_is_added_ungated(moe):
    """The shared MLP's output (``hook_shared_out``) is HF's ``shared_experts`` on the MLP input,
    unscaled, and the MLP output is it plus the routed experts' sum."""
    model, inp = moe
    names = ["ln2.hook_normalized", "mlp.hook_shared_out", "mlp.hook_expert_out", "hook_mlp_out"]
    _, cache = model.run_with_cache(inp, names_filter=[f"blocks.1.{n}" for n in names])
    x = cache["blocks.1.ln2.hook_normalized"]
    hf_shared = language_model(model.hf_model).layers[1].mlp.shared_experts
    assert not hasattr(model.blocks[1].mlp, "hook_shared_gate")
    with torch.no_grad():
        assert torch.allclose(cache["blocks.1.mlp.hook_shared_out"], hf_shared(x), atol=1e-6)
    total = cache["blocks.1.mlp.hook_expert_out"].sum(2) + cache["blocks.1.mlp.hook_shared_out"]
    assert torch.allclose(cache["blocks.1.hook_mlp_out"], total, atol=1e-5)
