"""TransformerLens' analysis tools on HookedLVLM: the weight views (``W_Q`` ... ``b_O``, ``OV`` /
``QK``), ``accumulated_bias``, ``all_composition_scores``, ``all_head_labels``,
``SVDInterpreter``, ``utilities.test_prompt``, ``head_detector.detect_head`` and
``patching`` (direct-path patching with split q/k/v inputs included). On the toy and on a tiny
grouped-query checkpoint, with a text prompt and an image input; every answer is computed here
by hand from the HF weights or the model's own activations."""

from __future__ import annotations

import ast
import re
from contextlib import nullcontext

import pytest
import torch
from torch import nn
from transformer_lens import SVDInterpreter, head_detector, patching, utilities
from transformer_lens.FactoredMatrix import FactoredMatrix

from lvlm_lens import HookedLVLM
from tests.helpers import PROMPTS, attention_layers, noise_image, toy_or_gqa
from tests.model.tl_parity import parity

TEXT = "what is this ? what is this ?"


@pytest.fixture(scope="module", params=["toy", "qwen2-gqa"])
def model(request, tiny_checkpoint):
    return toy_or_gqa(request.param, tiny_checkpoint)


def image_input(model, seed=3):
    return model.prepare(noise_image(48, 48, seed), PROMPTS[1], answers="star")


def heads_of(w, d_head):
    """``[out, in]`` projection weight -> ``[head, in, d_head]`` by slicing rows by hand."""
    return torch.stack([w[i * d_head:(i + 1) * d_head].T for i in range(w.shape[0] // d_head)])


# weights ----------------------------------------------------------------------------------
@parity("W_Q / W_K / W_V / W_O / b_Q / b_K / b_V / b_O", "works",
        "TL's shapes; W_K/W_V/b_K/b_V per query head (each key/value head repeated, as "
        "HookedTransformer's grouped-query attention), _W_K/_W_V the checkpoint's own")
def test_weight_views_are_the_hf_weights_per_head(model):
    d, g = model.cfg.d_head, model.cfg.n_heads // model.cfg.n_key_value_heads
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        assert torch.equal(model.W_Q[layer], heads_of(attn.q_proj.weight, d))
        kv = heads_of(attn.k_proj.weight, d)
        assert torch.equal(model.W_K[layer], kv.repeat_interleave(g, 0))
        vv = heads_of(attn.v_proj.weight, d)
        assert torch.equal(model.W_V[layer], vv.repeat_interleave(g, 0))
        wo = attn.o_proj.weight  # [d_model, head * d_head]
        for h in range(model.cfg.n_heads):
            assert torch.equal(model.W_O[layer, h], wo[:, h * d:(h + 1) * d].T)
            bias = attn.q_proj.bias
            expect = torch.zeros(d) if bias is None else bias[h * d:(h + 1) * d]
            assert torch.equal(model.b_Q[layer, h], expect)
            bias = attn.k_proj.bias
            expect = torch.zeros(d) if bias is None else bias[(h // g) * d:(h // g + 1) * d]
            assert torch.equal(model.b_K[layer, h], expect)
        assert torch.equal(model.b_O[layer], torch.zeros(model.cfg.d_model))  # no o_proj bias


@pytest.mark.parametrize(("kind", "name", "why"), [
    ("llama4", "W_in", r"differ in shape \(\[4, 64, 32\], \[64, 96\]; a sparse-MoE"),
    ("qwen3.5", "W_Q", "GatedDeltaNet layers have no W_Q; read blocks"),
])
def test_a_stack_over_unlike_layers_is_refused_in_one_line(tiny_checkpoint, kind, name, why):
    """Dense and sparse-MoE MLPs (Llama 4), attention and linear-attention layers (Qwen3.5):
    a ValueError saying to read the layers one by one, not a torch.stack crash or a
    "no attribute" AttributeError."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint(kind))
    with pytest.raises(ValueError, match=f"{name} is not stacked over layers: .*{why}"):
        getattr(model, name)


@parity("OV / QK (FactoredMatrix)", "works",
        "[layer, head, d_model, d_model] per query head, pre-RoPE; a head's hook_result is "
        "its pattern times ln1's output through OV (plus b_V @ W_O)")
@pytest.mark.parametrize("kind", ["text", "image"])
def test_ov_and_qk_are_the_heads_circuits(model, kind):
    assert isinstance(model.OV, FactoredMatrix) and isinstance(model.QK, FactoredMatrix)
    layer = model.cfg.n_layers - 1
    for h in range(model.cfg.n_heads):
        wv, wo, wq, wk = (model.W_V[layer, h], model.W_O[layer, h], model.W_Q[layer, h],
                          model.W_K[layer, h])
        assert torch.allclose(model.OV.AB[layer, h], wv @ wo, atol=1e-6)
        assert torch.allclose(model.QK.AB[layer, h], wq @ wk.T, atol=1e-6)
        assert torch.allclose(model.blocks[layer].attn.OV.AB[h], wv @ wo, atol=1e-6)
    x = model.to_tokens(TEXT) if kind == "text" else image_input(model)
    model.set_use_attn_result(True)
    try:
        _, cache = model.run_with_cache(x)
    finally:
        model.set_use_attn_result(False)
    normed = cache[f"blocks.{layer}.ln1.hook_normalized"]  # [batch, pos, d_model]
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, q, k]
    result = cache[f"blocks.{layer}.attn.hook_result"]  # [batch, pos, head, d_model]
    for h in range(model.cfg.n_heads):
        through_ov = normed @ model.OV.AB[layer, h] + model.b_V[layer, h] @ model.W_O[layer, h]
        assert torch.allclose(result[:, :, h], pattern[:, h] @ through_ov, atol=1e-4)


@parity("accumulated_bias", "works", "sum of b_O (and b_out) before the layer, as TL")
def test_accumulated_bias_sums_the_planted_output_biases(model):
    gen = torch.Generator().manual_seed(0)
    planted = []
    try:
        for block in model.blocks:
            pair = []
            # a sparse-MoE layer's experts have no bias (its b_out is zeros): nothing to plant
            down = getattr(block.mlp, "down_proj", None)
            for lin in (block.attn.o_proj, down):
                if lin is None:
                    pair.append(torch.zeros(model.cfg.d_model))
                    continue
                lin.bias = nn.Parameter(torch.randn(lin.out_features, generator=gen))
                pair.append(lin.bias.detach().clone())
            planted.append(pair)
        n = model.cfg.n_layers
        for layer in range(n):
            b_o, b_out = [sum((p[i] for p in planted[:layer]), torch.zeros(model.cfg.d_model))
                          for i in (0, 1)]
            assert torch.allclose(model.accumulated_bias(layer), b_o + b_out, atol=1e-5)
            no_mlp = model.accumulated_bias(layer, include_mlp_biases=False)
            assert torch.allclose(no_mlp, b_o, atol=1e-5)
            assert torch.allclose(model.accumulated_bias(layer, mlp_input=True),
                                  b_o + b_out + planted[layer][0], atol=1e-5)
    finally:
        for block in model.blocks:
            block.attn.o_proj.bias = None
            if hasattr(block.mlp, "down_proj"):
                block.mlp.down_proj.bias = None


@parity("all_composition_scores / all_head_labels", "works",
        "a [layer, head, layer, head] tensor as HookedTransformer (TL 4's bridge wraps the same "
        "numbers in CompositionScores), 0 where the first layer is not earlier; the labels are "
        "a list that is also callable (TL 2/3 method, TL 4 property)")
@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_composition_scores_by_the_frobenius_formula(model, mode):
    n, h = model.cfg.n_layers, model.cfg.n_heads
    labels = model.all_head_labels
    assert labels == model.all_head_labels() == [f"L{i}H{j}" for i in range(n) for j in range(h)]
    scores = model.all_composition_scores(mode)
    assert scores.shape == (n, h, n, h)
    ov = model.W_V @ model.W_O  # [layer, head, d_model, d_model]
    qk = model.W_Q @ model.W_K.transpose(-2, -1)
    later = {"Q": qk, "K": qk.transpose(-2, -1), "V": ov}[mode]
    for l1 in range(n):
        for l2 in range(n):
            for h1 in range(h):
                for h2 in range(h):
                    a, b = ov[l1, h1], later[l2, h2]
                    want = (a @ b).norm() / (a.norm() * b.norm()) if l1 < l2 else 0.0
                    assert float(scores[l1, h1, l2, h2]) == pytest.approx(float(want), abs=1e-5)
    with pytest.raises(ValueError, match="mode must be 'Q', 'K' or 'V'"):
        model.all_composition_scores("X")


# SVDInterpreter ---------------------------------------------------------------------------
def same_up_to_sign(got, want):
    """Singular vectors are defined up to sign: align each column, then compare."""
    signs = torch.sign((got * want).sum(0, keepdim=True))
    return torch.allclose(got * signs, want, atol=1e-4, rtol=1e-3)


SVD = dict(api="SVDInterpreter (OV, w_in, w_out)", status="works",
           note="reads model.tl_parameters() (TL's names); w_in has ln2's weight folded in, as "
           "TL with unfolded norms; a sparse-MoE layer has no dense W_in and is refused, as TL")


@parity(**SVD)
def test_svd_interpreter_projects_the_right_singular_vectors(model):
    svd, k, layer = SVDInterpreter(model), 3, model.cfg.n_layers - 1
    W_U = model.W_U  # [d_model, d_vocab]

    def top(matrix):
        return W_U.T @ torch.linalg.svd(matrix.double())[2][:k].T.to(W_U.dtype)

    for h in (0, model.cfg.n_heads - 1):
        got = svd.get_singular_vectors("OV", layer, num_vectors=k, head_index=h)
        assert got.shape == (model.cfg.d_vocab, 1, k)
        assert same_up_to_sign(got[:, 0], top(model.W_V[layer, h] @ model.W_O[layer, h]))
    dense = [i for i, b in enumerate(model.blocks) if hasattr(b.mlp, "down_proj")]
    for sparse in sorted(set(range(model.cfg.n_layers)) - set(dense))[:1]:  # MoE: refused
        with pytest.raises(NotImplementedError, match=f"w_in for layer {sparse}"):
            svd.get_singular_vectors("w_in", sparse, num_vectors=k)
    if not dense:
        return
    layer, mlp = dense[-1], model.blocks[dense[-1]].mlp
    ln2 = model.blocks[layer].ln2.weight
    got = svd.get_singular_vectors("w_in", layer, num_vectors=k)
    assert same_up_to_sign(got[:, 0], top(mlp.W_in.T * ln2))
    got = svd.get_singular_vectors("w_out", layer, num_vectors=k)
    assert same_up_to_sign(got[:, 0], top(mlp.W_out))


@parity(**SVD)
def test_svd_interpreter_refuses_a_sparse_moe_layer(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen3-vl-moe", mlp_only_layers=[0]))
    svd = SVDInterpreter(model)
    assert svd.get_singular_vectors("w_in", 0, num_vectors=2).shape[-1] == 2  # dense layer 0
    for vector_type in ("w_in", "w_out"):
        with pytest.raises(NotImplementedError, match="for layer 1: the layer does not"):
            svd.get_singular_vectors(vector_type, 1)
    assert svd.get_singular_vectors("OV", 1, num_vectors=2, head_index=0).shape[-1] == 2


# test_prompt ------------------------------------------------------------------------------
def printed_ranks(out):
    return ast.literal_eval(re.search(r"Ranks of the answer tokens: (.*)", out).group(1))


def rank_of(logits, token):
    return int((logits > logits[token]).sum())


@parity("utilities.test_prompt", "works",
        "with an image: test_prompt(inp, answer, model) inside model.bind(inp) (to_tokens(inp) "
        "gives its ids; ids that start with them run with its image, the answer as text); "
        "outside bind the image placeholders are refused, never run without the image")
@pytest.mark.parametrize("kind", ["text", "image"])
def test_test_prompt_ranks_are_the_models_ranks(model, kind, capsys):
    prompt = "what is this ?" if kind == "text" else image_input(model)
    answers = ["star", "circle"]
    ids = [int(model.to_tokens(" " + a, prepend_bos=False)[0, 0]) for a in answers]
    logits = model(prompt)[0, -1]  # the first answer token is predicted at the prompt's end
    with model.bind(prompt) if kind == "image" else nullcontext():
        utilities.test_prompt(prompt, answers[0], model, top_k=3)
        single = printed_ranks(capsys.readouterr().out)
        utilities.test_prompt(prompt, answers, model, print_details=False)
        multi = printed_ranks(capsys.readouterr().out)
    star = model.to_str_tokens(" star", prepend_bos=False)[0]
    assert single[0] == (star, rank_of(logits, ids[0]))
    assert [r for _, r in multi[0]] == [rank_of(logits, i) for i in ids]
    if kind == "image":
        text_logits = model("what is this ?")[0, -1]
        assert not torch.allclose(logits, text_logits)  # the image did reach the ranks
        with pytest.raises(ValueError, match="image placeholders but no image"):
            utilities.test_prompt(prompt, answers[0], model)


# detect_head ------------------------------------------------------------------------------
def pattern_by_definition(name, ids):
    """Detection patterns written from their definitions (TL's docs), ``[pos, pos]``."""
    n = len(ids)
    d = torch.zeros(n, n)
    for q in range(n):
        for k in range(q + 1):
            if name == "previous_token_head":
                d[q, k] = float(k == q - 1)
            elif name == "duplicate_token_head":
                d[q, k] = float(k < q and ids[k] == ids[q])
            else:  # induction: the token after an earlier occurrence of the current one
                d[q, k] = float(k >= 1 and k - 1 < q and ids[k - 1] == ids[q])
    return d


def plant(layer, head, wanted):
    """A hook making one head attend uniformly where ``wanted`` is 1 (to BOS in empty rows)."""
    p = wanted.clone()
    p[p.sum(-1) == 0, 0] = 1.0
    p = p / p.sum(-1, keepdim=True)

    def hook(pattern, hook):
        pattern[:, head] = p.to(pattern.dtype)
        return pattern

    return (f"blocks.{layer}.attn.hook_pattern", hook)


@parity("head_detector.detect_head", "works",
        "previous/duplicate/induction patterns and custom ones; with an image "
        "detect_head(model, inp, ...) inside model.bind(inp): image tokens share one "
        "placeholder id, so TL's duplicate/induction patterns count them as duplicates")
@pytest.mark.parametrize("kind", ["text", "image"])
@pytest.mark.parametrize("name", ["previous_token_head", "duplicate_token_head",
                                  "induction_head", "custom"])
def test_detect_head_finds_a_planted_head(model, kind, name):
    seq = TEXT if kind == "text" else image_input(model)
    ids = model.to_tokens(seq)[0].tolist()
    layer, head = model.cfg.n_layers - 1, 1
    if name == "custom":  # a random lower-triangular 0/1 pattern, ones on the diagonal
        gen = torch.Generator().manual_seed(1)
        wanted = torch.tril((torch.rand(len(ids), len(ids), generator=gen) > 0.5).float())
        wanted.fill_diagonal_(1.0)
        detection = wanted
    else:
        wanted, detection = pattern_by_definition(name, ids), name
    heads = None
    with model.bind(seq) if kind == "image" else nullcontext():
        if model.cfg.decoder.cross_attention is not None:  # a cross layer's pattern reads the
            # image side ([head, pos, image_pos]; none without an image): refused, so its heads
            # are left out
            with pytest.raises((AssertionError, KeyError),
                               match="not square|cross-attention layer, whose hook"):
                head_detector.detect_head(model, seq, detection, exclude_bos=True)
            heads = {la: list(range(model.cfg.n_heads)) for la in attention_layers(model)}
        with model.hooks(fwd_hooks=[plant(layer, head, wanted)]):
            scores = head_detector.detect_head(model, seq, detection, heads=heads,
                                               exclude_bos=True)
        plain = head_detector.detect_head(model, seq, detection, heads=heads, exclude_bos=True)
    assert scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert float(scores[layer, head]) == pytest.approx(1.0, abs=1e-5)
    others = torch.cat([scores[:layer].flatten(), scores[layer, :head], scores[layer, head + 1:]])
    assert torch.equal(others, torch.cat([plain[:layer].flatten(), plain[layer, :head],
                                          plain[layer, head + 1:]]))
    assert float(plain[layer, head]) < 1.0 - 1e-3  # the model's own head was not it


# patching ---------------------------------------------------------------------------------
def pair(model, kind):
    if kind == "text":
        return model.to_tokens("what is this ?"), model.to_tokens("what is that ?")
    return image_input(model, 3), image_input(model, 4)


@parity("patching.get_act_patch_* (generic sweeps)", "works",
        "the corrupted input may be an LVLMInput (it has .shape), so the image travels with it")
@pytest.mark.parametrize("kind", ["text", "image"])
def test_act_patch_sweeps_give_the_known_answers(model, kind):
    clean, corrupt = pair(model, kind)
    clean_logits, clean_cache = model.run_with_cache(clean)
    answer = 3

    def metric(logits):
        return logits[0, -1, answer]

    resid = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
    n = model.cfg.n_layers
    corrupt_metric = float(metric(model(corrupt)))
    # layer 0's residual stream is the embedding: the same token (or image token) at the same
    # place in both runs makes patching it a no-op; in the text pair one token differs, and
    # patching it makes the corrupted run the clean one
    ids_a, ids_b = (x.input_ids if hasattr(x, "input_ids") else x for x in (clean, corrupt))
    same = (ids_a[0] == ids_b[0]).nonzero().flatten()
    for p in same[same < ids_a.shape[1] - 2].tolist()[:3] + [ids_a.shape[1] - 1]:
        assert float(resid[0, p]) == pytest.approx(corrupt_metric, abs=1e-4)
    if kind == "text":
        (p,) = (ids_a[0] != ids_b[0]).nonzero().flatten().tolist()
        assert float(resid[0, p]) == pytest.approx(float(metric(clean_logits)), abs=1e-4)
    else:
        image = corrupt.positions("image")
        assert float(resid[0, image[0]]) != pytest.approx(corrupt_metric, abs=1e-6)
    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric)
    layer, head = 0, 1
    name = f"blocks.{layer}.attn.hook_z"

    def put(z, hook):
        z[:, :, head] = clean_cache[name][:, :, head]
        return z

    manual = model.run_with_hooks(corrupt, fwd_hooks=[(name, put)])
    assert heads.shape == (n, model.cfg.n_heads)
    assert float(heads[layer, head]) == pytest.approx(float(metric(manual)), abs=1e-5)
    every = patching.get_act_patch_block_every(model, corrupt, clean_cache, metric)
    assert torch.allclose(torch.as_tensor(every)[0], resid, atol=1e-6)  # resid_pre first
    mlp = patching.get_act_patch_mlp_out(model, corrupt, clean_cache, metric)
    assert torch.allclose(torch.as_tensor(every)[2], mlp, atol=1e-6)


def direct_path_by_hand(model, corrupt, corrupt_cache, delta, layer, head, component):
    """The destination head's query (key, value) recomputed from ``ln1(resid_pre + delta)``
    through its own ``W_Q`` (``W_K``, ``W_V``), replacing that head's ``hook_q`` (``hook_k``,
    ``hook_v``) alone."""
    resid = corrupt_cache[f"blocks.{layer}.hook_resid_pre"]
    block = model.blocks[layer]
    attn = block.attn
    W, b = {"q": (attn.W_Q, attn.b_Q), "k": (attn.W_K, attn.b_K), "v": (attn.W_V, attn.b_V)}[
        component]
    new = block.ln1(resid + delta) @ W[head] + b[head]
    kv = component != "q" and model.cfg.n_key_value_heads != model.cfg.n_heads
    assert not kv

    def put(x, hook):
        x[:, :, head] = new
        return x

    return model.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.attn.hook_{component}", put)])


DIRECT_PATH = dict(
    api="patching.get_act_patch_direct_path (split q/k/v inputs)", status="works",
    note="TL's sweep turns set_use_split_qkv_input on and hooks TL 4's "
    "blocks.{l}.attn.hook_{q,k,v}_input names, accepted for blocks.{l}.hook_{q,k,v}_input; "
    "component k/v on grouped-query models refused by TL itself; sandwich-norm blocks "
    "(Gemma 3) refused, a head's write there not being z @ W_O")


@parity(**DIRECT_PATH)
@pytest.mark.parametrize("kind", ["text", "image"])
def test_direct_path_patching_equals_the_path_by_hand(model, kind):
    clean, corrupt = pair(model, kind)
    _, clean_cache = model.run_with_cache(clean)
    corrupt_logits, corrupt_cache = model.run_with_cache(corrupt)
    answer = 3

    def metric(logits):
        return logits[0, -1, answer] - corrupt_logits[0, -1, answer]

    src, src_head = 0, 1
    same = patching.get_act_patch_direct_path(model, corrupt, corrupt_cache, corrupt_cache,
                                              metric, src, src_head, verbose=False)
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-5)  # nothing to patch in
    assert not model.cfg.use_split_qkv_input  # the caller's switch restored
    z = f"blocks.{src}.attn.hook_z"
    delta = (clean_cache[z][:, :, src_head] - corrupt_cache[z][:, :, src_head]) @ model.W_O[
        src, src_head]
    components = ["q"] if model.cfg.n_key_value_heads != model.cfg.n_heads else ["q", "k", "v"]
    for component in components:
        swept = patching.get_act_patch_direct_path(model, corrupt, clean_cache, corrupt_cache,
                                                   metric, src, src_head, component=component,
                                                   verbose=False)
        assert torch.equal(swept[: src + 1], torch.zeros_like(swept[: src + 1]))
        for layer, head in [(src + 1, 0), (model.cfg.n_layers - 1, model.cfg.n_heads - 1)]:
            by_hand = direct_path_by_hand(model, corrupt, corrupt_cache, delta, layer, head,
                                          component)
            assert float(swept[layer, head]) == pytest.approx(float(metric(by_hand)), abs=1e-4)
        assert swept.abs().max() > 1e-4  # the paths do carry an effect
    if components == ["q"]:
        with pytest.raises(ValueError, match="GQA/MQA"):
            patching.get_act_patch_direct_path(model, corrupt, clean_cache, corrupt_cache,
                                               metric, src, src_head, component="k",
                                               verbose=False)


@parity("patching.get_act_patch_direct_path_all_sources", "works",
        "[layer, head, layer, head]: each source head's direct-path sweep, 0 where the "
        "destination layer is not later")
def test_direct_path_all_sources_stacks_the_single_sweeps(model):
    clean, corrupt = pair(model, "image")
    _, clean_cache = model.run_with_cache(clean)
    logits, corrupt_cache = model.run_with_cache(corrupt)

    def metric(x):
        return x[0, -1, 3] - logits[0, -1, 3]

    every = patching.get_act_patch_direct_path_all_sources(model, corrupt, clean_cache,
                                                           corrupt_cache, metric, verbose=False)
    n, h = model.cfg.n_layers, model.cfg.n_heads
    assert every.shape == (n, h, n, h)
    for src, src_head in [(0, 0), (n - 2, h - 1)]:
        one = patching.get_act_patch_direct_path(model, corrupt, clean_cache, corrupt_cache,
                                                 metric, src, src_head, verbose=False)
        assert torch.allclose(every[src, src_head], one, atol=1e-6)


@parity(**DIRECT_PATH)
def test_direct_path_patching_is_refused_after_a_sandwich_norm(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("gemma3"))
    tokens = model.to_tokens("what is this ?")
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(ValueError, match="hook_attn_out reads ln1_post"):
        patching.get_act_patch_direct_path(model, tokens, cache, cache, lambda x: x.sum(), 0, 0,
                                           verbose=False)
