"""Tiny family checkpoints: offline loading, real-like configs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

from lvlm_lens.model.families import FAMILIES
from lvlm_lens.testing.tiny import TINY_KINDS
from lvlm_lens.testing.tiny_families import FAMILY_KINDS
from tests.helpers import noise_image

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what ?"}]}]


def _load(folder):
    import transformers

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    cls = getattr(transformers, FAMILIES[config.model_type].hf_class)
    model = cls.from_pretrained(folder, local_files_only=True, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer, AutoImageProcessor.from_pretrained(folder)


def test_every_family_has_a_tiny_kind():
    assert set(FAMILY_KINDS) <= set(TINY_KINDS)


@pytest.mark.parametrize("kind", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_qwen_configs_are_like_the_real_ones(tiny_checkpoint, kind):
    model, tok, processor = _load(tiny_checkpoint(kind, chat_template=True))
    assert type(processor).__name__ == "Qwen2VLImageProcessorPil"  # no torchvision
    tc = model.config.text_config
    attn = model.model.language_model.layers[0].self_attn
    assert tc.num_key_value_heads < tc.num_attention_heads  # GQA
    assert attn.o_proj.bias is None
    assert (attn.q_proj.bias is not None) == (kind != "qwen3-vl")  # Qwen3: q/k norms instead
    assert hasattr(attn, "q_norm") == (kind == "qwen3-vl")
    assert sum(tc.rope_parameters["mrope_section"]) == attn.head_dim // 2
    tied = model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert tied == (kind != "qwen2.5-vl")  # as Qwen2-VL-2B, Qwen3-VL-2B / Qwen2.5-VL-7B
    assert tok.convert_ids_to_tokens(model.config.image_token_id) == "<|image_pad|>"
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>what ?<|im_end|>" in text
    assert "<unk>" not in tok.convert_ids_to_tokens(tok(text).input_ids)


def test_gemma3_config_is_like_the_real_one(tiny_checkpoint):
    model, tok, processor = _load(tiny_checkpoint("gemma3", chat_template=True))
    assert type(processor).__name__ == "Gemma3ImageProcessorPil"
    tc = model.config.text_config
    assert tc.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    rope = tc.rope_parameters
    assert rope["sliding_attention"]["rope_theta"] != rope["full_attention"]["rope_theta"]
    assert tc.num_key_value_heads < tc.num_attention_heads
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    layer = model.model.language_model.layers[0]
    for norm in (layer.input_layernorm, layer.post_feedforward_layernorm, layer.self_attn.q_norm):
        assert norm.weight.abs().mean() > 0.05  # 1 + w norms: w moved off 0
    assert model.model.multi_modal_projector.mm_input_projection_weight.abs().mean() > 0
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    turn = "<start_of_turn>user\n<start_of_image>what ?<end_of_turn>\n"
    assert text == f"<s>{turn}<start_of_turn>model\n"
    assert "<unk>" not in tok.convert_ids_to_tokens(tok(text).input_ids)


@pytest.mark.parametrize("kind", [k for k in FAMILY_KINDS if k not in ("internvl", "idefics3")])
def test_seeded_and_real_forward(tiny_checkpoint, kind):
    model, _, processor = _load(tiny_checkpoint(kind, chat_template=True))
    other, _, _ = _load(tiny_checkpoint(kind, seed=1))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)
    images = processor([noise_image(20, 28, 1), noise_image(30, 18, 2)], return_tensors="pt")
    kw = {k: v for k, v in images.items() if k != "num_crops"}
    with torch.no_grad():
        feats = model.get_image_features(**kw).pooler_output
    counts = [f.shape[0] for f in feats]
    if kind == "qwen3-vl":  # DeepStack: merged features of both vision layers, per image
        deep = model.get_image_features(**kw).deepstack_features
        assert len(deep) == 2 and [d.shape[0] for d in deep[0]] == counts
    if kind == "gemma3":
        assert counts == [16, 16]
    else:  # 20x28 -> 20x28 px -> 5x7 merged tokens; 30x18 -> 32x16 px -> 8x4
        assert counts == [35, 32]
        assert (images["image_grid_thw"].prod(-1) // 4).tolist() == counts


def test_internvl_config_is_like_the_real_one(tiny_checkpoint):
    model, tok, processor = _load(tiny_checkpoint("internvl", chat_template=True))
    assert type(processor).__name__ == "GotOcr2ImageProcessorPil" and processor.crop_to_patches
    tc = model.config.text_config
    assert tc.model_type == "qwen2" and tc.num_key_value_heads < tc.num_attention_heads
    assert model.model.language_model.layers[0].self_attn.q_proj.bias is not None
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert tok.convert_ids_to_tokens(model.config.image_token_id) == "<IMG_CONTEXT>"
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<IMG_CONTEXT>\nwhat ?<|im_end|>\n<|im_start|>assistant\n"
    out = processor([noise_image(20, 28, 1), noise_image(16, 16, 2)], return_tensors="pt")
    assert out["num_patches"].tolist() == [5, 1]  # a 2x2 grid + thumbnail; one tile
    with torch.no_grad():
        feats = model.get_image_features(out["pixel_values"]).pooler_output
    assert feats.shape[:2] == (6, model.config.image_seq_length) == (6, 16)
    other, _, _ = _load(tiny_checkpoint("internvl", seed=1))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_idefics3_config_is_like_smolvlm(tiny_checkpoint):
    model, tok, processor = _load(tiny_checkpoint("idefics3", chat_template=True))
    assert type(processor).__name__ == "Idefics3ImageProcessorPil" and processor.do_image_splitting
    tc = model.config.text_config
    assert tc.model_type == "llama" and tc.num_key_value_heads < tc.num_attention_heads
    assert model.lm_head.weight is model.model.text_model.embed_tokens.weight  # SmolVLM-256M
    assert model.config.scale_factor == 4  # pixel shuffle by 4, as SmolVLM-256M / 500M
    assert tok.convert_ids_to_tokens(model.config.image_token_id) == "<image>"
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == "<s>User:<image>what ?<end_of_utterance>\nAssistant:"
    for special in ("<fake_token_around_image>", "<global-img>", "<row_6_col_6>"):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
    out = processor([noise_image(20, 28, 1), noise_image(54, 16, 2)], return_tensors="pt")
    assert out["pixel_values"].shape[:2] == (1, 14)  # 3x3 tiles + global; 3x1 + global
    with torch.no_grad():
        feats = model.get_image_features(**out).pooler_output
    assert [f.shape[0] for f in feats] == [14 * 16]  # 4x4 tokens per tile
    other, _, _ = _load(tiny_checkpoint("idefics3", seed=1))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)
