"""Gemma 2's softcapping as decoder features, against HF's Gemma 2 modules (eager): attention
scores capped by ``tanh(s / cap) * cap`` before the mask, ``query_pre_attn_scalar`` scaling,
sandwich norms; logits capped likewise in ``unembed``. The whole PaliGemma 2 decoder against HF
is in tests/model/test_paligemma.py."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.gemma2 import modeling_gemma2 as hf

from lvlm_lens.model.blocks import TransformerBlock, Unembed
from lvlm_lens.model.config import DecoderSpec, LVLMConfig
from lvlm_lens.model.families import check_supported
from lvlm_lens.model.masks import causal_mask

ATTN_CAP, LOGIT_CAP = 0.5, 0.3  # small: the random scores and logits exceed them


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    tc = transformers.Gemma2Config(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=12,
        attn_logit_softcapping=ATTN_CAP, final_logit_softcapping=LOGIT_CAP,
    )  # fmt: skip
    tc._attn_implementation = "eager"
    hf_layer = hf.Gemma2DecoderLayer(tc, 0).eval()
    with torch.no_grad():
        for p in hf_layer.parameters():
            p.normal_(0.0, 0.5)
    spec = DecoderSpec(norm_offset=1.0, sandwich_norms=True, attn_softcap=ATTN_CAP)
    cfg = LVLMConfig(n_layers=1, n_heads=4, d_head=8, d_model=32, d_mlp=64, d_vocab=32,
                     n_key_value_heads=2, eps=tc.rms_norm_eps, decoder=spec)
    return tc, hf_layer, TransformerBlock(cfg, hf_layer, 0)


def _inputs(tc):
    torch.manual_seed(1)
    x = torch.randn(2, 7, 32)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cos, sin = hf.Gemma2RotaryEmbedding(tc)(x, pos)
    return x, mask, cos, sin


def test_block_equals_hf_gemma2_layer(layer):
    tc, hf_layer, block = layer
    assert block.attn.scaling == 12**-0.5  # query_pre_attn_scalar, not d_head
    x, mask, cos, sin = _inputs(tc)
    additive = causal_mask(mask, 7, x.dtype)
    with torch.no_grad():
        theirs = hf_layer(x, position_embeddings=(cos, sin), attention_mask=additive)
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        ours, _ = block(x, cos, sin, additive)
    real = mask.bool()
    assert (ours - theirs)[real].abs().max() <= 1e-5
    assert theirs.std() > 0.1


def test_scores_hook_holds_capped_scores_and_path_is_materialised(layer):
    tc, _, block = layer
    x, mask, cos, sin = _inputs(tc)
    attn, seen = block.attn, {}
    attn.hook_attn_scores.add_hook(lambda t, hook: seen.setdefault("s", t.clone()))
    attn.hook_rot_q.add_hook(lambda t, hook: seen.setdefault("q", t.clone()))
    attn.hook_rot_k.add_hook(lambda t, hook: seen.setdefault("k", t.clone()))
    try:
        with torch.no_grad():
            block(x, cos, sin, causal_mask(mask, 7, x.dtype))
    finally:
        for h in (attn.hook_attn_scores, attn.hook_rot_q, attn.hook_rot_k):
            h.remove_hooks()
    k = seen["k"].repeat_interleave(2, dim=2)
    raw = torch.einsum("bqhd,bkhd->bhqk", seen["q"], k) * attn.scaling
    allowed = seen["s"] > torch.finfo(x.dtype).min / 2
    assert (raw.abs() > ATTN_CAP).any()  # the cap bites
    expected = torch.tanh(raw / ATTN_CAP) * ATTN_CAP  # an independent formula
    assert (seen["s"] - expected)[allowed].abs().max() <= 1e-6
    # SDPA cannot cap: with fused_attention on, the materialised branch is chosen by itself
    q = torch.zeros(1, 4, 1, 8)
    assert block.cfg.fused_attention and not attn.fusable(q, [None]) and not attn.fused(q, [None])


def test_unembed_caps_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 5, bias=False)
    x = torch.randn(2, 3, 8) * 4
    assert (head(x).abs() > LOGIT_CAP).any()
    expected = LOGIT_CAP * torch.tanh(head(x) / LOGIT_CAP)
    assert torch.allclose(Unembed(head, softcap=LOGIT_CAP)(x), expected, atol=1e-7)
    assert torch.equal(Unembed(head)(x), head(x))


def test_cap_refused_where_the_hf_model_ignores_it():
    with pytest.raises(ValueError, match="attn_logit_softcapping"):  # HF's Gemma 3 ignores it
        check_supported(transformers.Gemma3Config(text_config={"attn_logit_softcapping": 50.0}))
