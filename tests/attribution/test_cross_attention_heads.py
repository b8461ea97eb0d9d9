"""Head-level tools on a cross-attention model (Llama 3.2 Vision): each layer's attention hooks
are found by one name helper, so the rankings, the attention view and the head patching run
on the cross-attention layers too (whose hooks are ``cross_attn.hook_*``), with values equal
to what the cache holds; and each head's kind is named."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from transformer_lens import patching as tl_patching

from lvlm_lens import HookedLVLM
from lvlm_lens.analysis.circuits import PatchingConfig, activation_patching, metric_fn
from lvlm_lens.attribution import AttributionConfig, AttributionResult, head_attribution
from lvlm_lens.attribution.rankings import attention_weight
from lvlm_lens.interventions.metrics import final_logits
from lvlm_lens.interventions.patching import patch_attn_heads, patch_metric
from lvlm_lens.testing.tiny_mllama import CROSS_LAYERS
from lvlm_lens.viz.attention_view import collapsed_attention
from lvlm_lens.viz.patches import head_attention
from tests.helpers import PROMPTS, noise_image

IMAGES = [noise_image(16, 16, 1), noise_image(20, 50, 2)]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("mllama"))


@pytest.fixture(scope="module")
def inp(model):
    return model.prepare(IMAGES, PROMPTS, answers=["star", "circle"])


def test_attn_hook_name_and_kind(model):
    cross = CROSS_LAYERS[0]
    assert model.attn_hook_name(cross, "pattern") == f"blocks.{cross}.cross_attn.hook_pattern"
    assert model.attn_hook_name(0, "z") == "blocks.0.attn.hook_z"
    assert [model.attn_kind(la) for la in range(model.cfg.n_layers)] == [
        "cross" if la in CROSS_LAYERS else "self" for la in range(model.cfg.n_layers)]
    with pytest.raises(ValueError, match="layer 1 \\(cross attention\\) has no hook_rot_q"):
        model.attn_hook_name(cross, "rot_q")
    with pytest.raises(ValueError, match="layer 9 out of range"):
        model.attn_hook_name(9, "z")


@torch.no_grad()
def test_attention_weight_ranks_cross_heads_by_their_image_side_mass(model, inp):
    """A cross head's mass on the image = the cached pattern of the final query summed over the
    image side; a source without the image token gets no cross mass; self layers unchanged."""
    scores = attention_weight(model, inp, "image", "final")
    n, h = model.cfg.n_layers, model.cfg.n_heads
    assert tuple(scores.shape) == (len(inp), n, h)
    _, cache = model.run_with_cache(inp)
    layer = CROSS_LAYERS[1]
    pattern = cache[f"blocks.{layer}.cross_attn.hook_pattern"]
    for i in range(len(inp)):
        want = pattern[i, :, -1].sum(-1)  # the final query reads only its image's side
        assert torch.allclose(scores[i, layer], want.float(), atol=1e-6)
        assert torch.allclose(scores[i, layer], torch.ones(h), atol=1e-5)
    plain = cache["blocks.0.attn.hook_pattern"]
    img = inp.groups["image"]
    want = (plain[:, :, -1] * img[:, None, :]).sum(-1)
    assert torch.allclose(scores[:, 0], want.float(), atol=1e-6) and want.max() > 0
    question = attention_weight(model, inp, "question", "final")
    assert question[:, CROSS_LAYERS].abs().max() == 0 and question[:, 0].max() > 0


@torch.no_grad()
def test_attention_view_shows_cross_heads_on_the_image_token(model, inp):
    layer, head, i = CROSS_LAYERS[0], 1, 1
    view = collapsed_attention(model, inp, [(0, 0), (layer, head)], index=i)
    assert view.heads == [(0, 0), (layer, head)]
    rows = view.pattern[1]
    assert np.allclose(rows.sum(-1), 1.0, atol=1e-5)  # each query row sums to 1
    at = int(inp.positions("image", i)[0])
    col = next(c for c, m in enumerate(view.members) if at in m)
    _, cache = model.run_with_cache(inp)
    p = cache[f"blocks.{layer}.cross_attn.hook_pattern"][i, head]
    q = view.members.index([inp.shape[1] - 1])  # the final token's row
    assert rows[q, col] == pytest.approx(float(p[-1].sum()), abs=1e-5)
    assert np.allclose(np.delete(rows, col, axis=1), 0.0)  # the image side is all it reads


@torch.no_grad()
def test_head_patching_returns_cross_layers(model, inp):
    """Patching one cross head's z = the hand-built run with that head's clean z hooked in."""
    other = model.prepare([IMAGES[1], IMAGES[0]], PROMPTS)
    out = patch_attn_heads(model, inp, other, "logit", normalize=False)
    n, h = model.cfg.n_layers, model.cfg.n_heads
    assert tuple(out.shape) == (n, h)
    layer, head = CROSS_LAYERS[0], 1
    _, cache = model.run_with_cache(inp, names_filter=lambda name: name.endswith("hook_z"))
    clean = cache[f"blocks.{layer}.cross_attn.hook_z"]

    def patch(z, hook):
        z[:, :, head] = clean[:, :, head]
        return z

    fn = patch_metric("logit", inp)
    want = fn(model.run_with_hooks(other, fwd_hooks=[(f"blocks.{layer}.cross_attn.hook_z",
                                                      patch)]))  # fmt: skip
    assert out[layer, head] == pytest.approx(float(want), abs=1e-5)
    assert (out[CROSS_LAYERS] - fn(model(other))).abs().max() > 1e-5  # cross heads matter
    # TransformerLens' own helper on the model's cache object (it reads blocks.{l}.attn.hook_z)
    _, cache = model.run_with_cache(inp, names_filter=lambda name: name.endswith("hook_z"))
    tl = tl_patching.get_act_patch_attn_head_out_all_pos(model, other, cache, fn)
    assert torch.allclose(tl, out, atol=1e-6)
    name = f"blocks.{layer}.cross_attn.hook_z"
    for key in (f"blocks.{layer}.attn.hook_z", ("z", layer), ("z", layer - 5)):
        assert cache[key] is cache[name]
    with pytest.raises(KeyError):
        cache["blocks.0.attn.hook_pattern"]  # not cached: still a KeyError


@torch.no_grad()
def test_circuit_patching_names_each_head_s_kind(model, inp):
    """Exact head patching runs on the cross heads (= the hand-patched run) and its table says
    which heads are cross; the residual and MLP rows have no kind."""
    other = model.prepare([IMAGES[1], IMAGES[0]], PROMPTS, answers=["circle", "star"])
    config = PatchingConfig(components=("heads", "mlp"), groups=("all",), progress=False)
    frame = activation_patching(model, inp, other, config).to_frame()
    heads = frame[frame.component == "heads"]
    assert len(heads) == model.cfg.n_layers * model.cfg.n_heads * len(inp)
    assert set(heads[heads.layer.isin(CROSS_LAYERS)].kind) == {"cross"}
    assert set(heads[~heads.layer.isin(CROSS_LAYERS)].kind) == {"self"}
    assert frame[frame.component == "mlp"].kind.isna().all()
    layer, head = CROSS_LAYERS[1], 0
    _, cache = model.run_with_cache(inp, names_filter=model.attn_hook_name(layer, "z"))
    clean = cache[model.attn_hook_name(layer, "z")]

    def patch(z, hook):
        z[:, :, head] = clean[:, :, head]
        return z

    fn = metric_fn(model, inp, other, "logit_diff")
    want = fn(final_logits(model.run_with_hooks(other, fwd_hooks=[(
        f"blocks.{layer}.cross_attn.hook_z", patch)]))) - fn(final_logits(model(other)))
    got = heads[(heads.layer == layer) & (heads["head"] == head)].sort_values("example").delta
    assert np.allclose(got.to_numpy(), want.numpy(), atol=1e-5) and want.abs().max() > 1e-6


@torch.no_grad()
def test_a_plain_family_s_heads_are_all_self(tiny_checkpoint):
    plain = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))
    assert {plain.attn_kind(la) for la in range(plain.cfg.n_layers)} == {"self"}
    images = [noise_image(16, 16, 1), noise_image(16, 16, 2)]
    inp = plain.prepare(images[:1], PROMPTS[:1], answers=["star"])
    other = plain.prepare(images[1:], PROMPTS[:1], answers=["circle"])
    config = PatchingConfig(components=("heads",), groups=("all",), progress=False)
    frame = activation_patching(plain, inp, other, config).to_frame()
    assert set(frame.kind) == {"self"}
    assert len(frame) == plain.cfg.n_layers * plain.cfg.n_heads


def _csv_kinds(result, path):
    result.to_csv(path)
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["layer", "head", "kind"]
    return {(int(r[0]), int(r[1])): r[2] for r in rows[1:]}


def test_attribution_results_name_cross_heads(model, inp, tmp_path):
    """Head attribution ranks self and cross heads together; its table says which is which,
    and the kinds survive save / load."""
    config = AttributionConfig(n_masks=24, batch_size=8)
    result = head_attribution(model, inp, config, progress=False)
    assert result.layer_kinds == model.attn_kinds()
    kinds = _csv_kinds(result, tmp_path / "heads.csv")
    assert len(kinds) == model.cfg.n_layers * model.cfg.n_heads
    assert {k for (la, _), k in kinds.items() if la in CROSS_LAYERS} == {"cross"}
    assert {k for (la, _), k in kinds.items() if la not in CROSS_LAYERS} == {"self"}
    assert result.coef[:, CROSS_LAYERS].abs().max() > 0  # the cross heads were ranked
    result.save(tmp_path / "saved")
    assert AttributionResult.load(tmp_path / "saved").layer_kinds == result.layer_kinds
    with pytest.raises(ValueError, match="layer_kinds must have 5 entries"):
        AttributionResult(result.coef, result.intercepts, result.pearson_r, result.r2,
                          layer_kinds=["self"])


def test_a_plain_family_s_attribution_table_is_all_self(tiny_checkpoint, tmp_path):
    plain = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))
    inp = plain.prepare([noise_image(16, 16, 1)], PROMPTS[:1])
    result = head_attribution(plain, inp, AttributionConfig(n_masks=16, batch_size=8),
                              progress=False)  # fmt: skip
    kinds = _csv_kinds(result, tmp_path / "heads.csv")
    assert len(kinds) == plain.cfg.n_layers * plain.cfg.n_heads
    assert set(kinds.values()) == {"self"}


@torch.no_grad()
def test_head_attention_rows_put_a_cross_head_on_the_image_token(model, inp):
    layer, head, i = CROSS_LAYERS[1], 0, 1
    rows = head_attention(model, inp, [(0, 1), (layer, head)], index=i)
    row = rows[(layer, head)]
    assert row.shape == (inp.shape[1],)
    at = int(inp.positions("image", i)[0])
    _, cache = model.run_with_cache(inp)
    want = float(cache[f"blocks.{layer}.cross_attn.hook_pattern"][i, head, -1].sum())
    assert row[at] == pytest.approx(want, abs=1e-5) and np.delete(row, at).max() == 0
    plain = cache["blocks.0.attn.hook_pattern"][i, 1, -1].numpy()
    assert np.allclose(rows[(0, 1)], plain, atol=1e-6)


def test_linear_attention_layers_are_named_and_refused_for_patterns(tiny_checkpoint):
    """Qwen3.5: its Gated-DeltaNet layers say ``linear`` and have no attention pattern, so the
    attention-weight ranking refuses them in one line instead of a missing-key error."""
    qwen = HookedLVLM.from_pretrained(tiny_checkpoint("qwen3.5", chat_template=True))
    lin = qwen.cfg.decoder.linear_attention.layers
    kinds = qwen.attn_kinds()
    assert {kinds[la] for la in lin} == {"linear"} and "self" in kinds
    assert qwen.attn_hook_name(lin[0], "z") == f"blocks.{lin[0]}.attn.hook_z"
    inp = qwen.prepare([noise_image(32, 32, 1)], PROMPTS[:1])
    with pytest.raises(ValueError, match=rf"layer {lin[0]} \(linear attention\) has no "
                                         "hook_pattern"):  # fmt: skip
        attention_weight(qwen, inp)
