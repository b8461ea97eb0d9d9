"""The tiny checkpoints load offline through the HF paths and run a real multimodal forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
)

from lvlm_lens.testing.tiny import IMAGE_SIZE, LLAVA_KINDS, PATCH_SIZE, hf_num_image_tokens

MODEL_CLASSES = {
    "llava-llama": LlavaForConditionalGeneration,
    "llava-next-mistral": LlavaNextForConditionalGeneration,
    "llava-next-vicuna": LlavaNextForConditionalGeneration,
    "llava-onevision-qwen2": LlavaOnevisionForConditionalGeneration,
}
IMAGE_PROCESSOR_CLASSES = {
    "llava-llama": "CLIPImageProcessorPil",
    "llava-next-mistral": "LlavaNextImageProcessorPil",
    "llava-next-vicuna": "LlavaNextImageProcessorPil",
    "llava-onevision-qwen2": "LlavaOnevisionImageProcessorPil",
}
# (kv heads, q/k/v bias) of the text model.
TEXT_SHAPES = {
    "llava-llama": (4, False),
    "llava-next-mistral": (2, False),
    "llava-next-vicuna": (4, False),
    "llava-onevision-qwen2": (2, True),
}
# PIL (width, height) of the two test images, and the image tokens each gives per kind.
IMAGE_SIZES = [(16, 24), (30, 14)]
# Any-resolution (16-px tiles of 4x4 features, "default" drops CLS; SigLIP has none): 16x24
# picks the (h, w) = (32, 16) grid, 8x4 features unpadded to 6x4, + 6 newlines + 16 base = 46;
# 30x14 picks (16, 32), 4x8 features, unpadded height round(14 * 8 / 30) = 4: 32 + 4 + 16 = 52.
EXPECTED_TOKENS = {
    "llava-llama": [16, 16],
    "llava-next-mistral": [46, 52],
    "llava-next-vicuna": [46, 52],
    "llava-onevision-qwen2": [46, 52],
}
PROMPT = "USER: <image>\nwhat is the main object ? ASSISTANT:"


def _load(folder, kind):
    model = MODEL_CLASSES[kind].from_pretrained(
        folder, local_files_only=True, attn_implementation="eager"
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer, image_processor


def _images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in IMAGE_SIZES
    ]


@pytest.mark.parametrize("kind", LLAVA_KINDS)
def test_loads_offline_with_expected_classes_and_config(tiny_checkpoint, kind):
    model, tokenizer, image_processor = _load(tiny_checkpoint(kind), kind)
    assert type(image_processor).__name__ == IMAGE_PROCESSOR_CLASSES[kind]
    cfg = model.config
    assert cfg.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert cfg.image_token_index == cfg.image_token_id
    assert cfg.text_config.vocab_size == len(tokenizer)
    assert cfg.text_config.pad_token_id == tokenizer.pad_token_id
    assert cfg.text_config.bos_token_id == tokenizer.bos_token_id
    assert cfg.text_config.eos_token_id == tokenizer.eos_token_id
    kv_heads, qkv_bias = TEXT_SHAPES[kind]
    assert cfg.text_config.num_attention_heads == 4
    assert cfg.text_config.num_key_value_heads == kv_heads
    attn = model.model.language_model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) == qkv_bias
    assert attn.k_proj.weight.shape == (kv_heads * 16, 64)
    if kind == "llava-llama":
        assert cfg.vision_feature_select_strategy == "default"
        assert cfg.vision_feature_layer == -2
    else:
        assert cfg.image_grid_pinpoints


@pytest.mark.parametrize("kind", LLAVA_KINDS)
def test_weights_are_randomised_and_seeded(tiny_checkpoint, kind):
    model, _, _ = _load(tiny_checkpoint(kind), kind)
    again, _, _ = _load(tiny_checkpoint(kind, seed=0, chat_template=False), kind)
    other, _, _ = _load(tiny_checkpoint(kind, seed=1), kind)
    state, state_again, state_other = model.state_dict(), again.state_dict(), other.state_dict()
    norms = [k for k in state if "norm" in k and k.endswith("weight")]
    assert norms and all(not torch.allclose(state[k], torch.ones_like(state[k])) for k in norms)
    if kind != "llava-llama":
        assert state["model.image_newline"].abs().min() > 0
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert not torch.equal(state["lm_head.weight"], state_other["lm_head.weight"])


@pytest.mark.parametrize("kind", LLAVA_KINDS)
def test_tokenizer_round_trip_with_offsets(tiny_checkpoint, kind):
    _, tokenizer, _ = _load(tiny_checkpoint(kind), kind)
    enc = tokenizer(PROMPT, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == [
        "<s>", "USER", ":", "<image>", "\n", "what", "is", "the", "main", "object", "?",
        "ASSISTANT", ":",
    ]  # fmt: skip
    assert "<unk>" not in tokens
    for token, (start, end) in zip(tokens[1:], enc["offset_mapping"][1:], strict=True):
        assert PROMPT[start:end] == token
    assert enc["offset_mapping"][0] == (0, 0)
    assert tokenizer("zebra")["input_ids"] == [tokenizer.bos_token_id, tokenizer.unk_token_id]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("llava-llama", "USER: <image>\nWhat is this? ASSISTANT:"),
        ("llava-next-vicuna", "USER: <image>\nWhat is this? ASSISTANT:"),
        (
            "llava-onevision-qwen2",
            "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n",
        ),
    ],
)
def test_chat_template(tiny_checkpoint, kind, expected):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint(kind, chat_template=True))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == expected
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert tokens.count("<image>") == 1 and "<unk>" not in tokens
    assert AutoTokenizer.from_pretrained(tiny_checkpoint(kind)).chat_template is None


@pytest.mark.parametrize("kind", LLAVA_KINDS)
def test_image_token_counts(tiny_checkpoint, kind):
    model, _, image_processor = _load(tiny_checkpoint(kind), kind)
    image_inputs = image_processor(_images(), return_tensors="pt")
    counts = [hf_num_image_tokens(model, image_inputs, i) for i in range(len(IMAGE_SIZES))]
    assert counts == EXPECTED_TOKENS[kind]
    if kind == "llava-llama":
        assert counts[0] == (IMAGE_SIZE // PATCH_SIZE) ** 2
    else:
        assert counts[0] != counts[1]
    if kind != "llava-onevision-qwen2":  # the OneVision processor needs torchvision
        processor = AutoProcessor.from_pretrained(tiny_checkpoint(kind))
        enc = processor(text=[PROMPT, PROMPT], images=_images(), return_tensors="pt", padding=True)
        assert (enc["input_ids"] == model.config.image_token_id).sum(1).tolist() == counts


def _expanded_batch(tokenizer, image_token_id, counts):
    rows = []
    for n in counts:
        ids = tokenizer(PROMPT)["input_ids"]
        at = ids.index(image_token_id)
        rows.append(ids[:at] + [image_token_id] * n + ids[at + 1 :])
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


@pytest.mark.parametrize("kind", LLAVA_KINDS)
def test_forward_with_expanded_image_tokens(tiny_checkpoint, kind):
    model, tokenizer, image_processor = _load(tiny_checkpoint(kind), kind)
    image_inputs = image_processor(_images(), return_tensors="pt")
    counts = [hf_num_image_tokens(model, image_inputs, i) for i in range(len(IMAGE_SIZES))]
    input_ids, attention_mask = _expanded_batch(tokenizer, model.config.image_token_id, counts)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, **image_inputs)
    assert out.logits.shape == (*input_ids.shape, len(tokenizer))
    assert torch.isfinite(out.logits).all()
    last = out.logits[0, attention_mask[0].sum() - 1]
    assert last.std() > 0.3  # not trivially flat
    # One image token too few must be rejected: the count is what HF splices in.
    short_ids, short_mask = _expanded_batch(
        tokenizer, model.config.image_token_id, [counts[0] - 1, counts[1]]
    )
    with pytest.raises(ValueError, match="do not match"), torch.no_grad():
        model(input_ids=short_ids, attention_mask=short_mask, **image_inputs)


@pytest.mark.parametrize("kind", ["llava-llama", "llava-next-mistral", "llava-onevision-qwen2"])
def test_text_overrides(tiny_checkpoint, kind):
    overrides = dict(
        num_hidden_layers=3,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
    )
    if kind == "llava-next-mistral":
        overrides["sliding_window"] = 8
    model, _, _ = _load(tiny_checkpoint(kind, **overrides), kind)
    text = model.config.text_config
    assert text.num_hidden_layers == len(model.model.language_model.layers) == 3
    assert text.rope_parameters["rope_type"] == "linear"
    assert text.rope_parameters["factor"] == 2.0
    assert text.rope_parameters["rope_theta"] == 5000.0
    assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)
    if kind == "llava-next-mistral":
        assert text.sliding_window == 8


def test_unknown_kind_is_rejected(tmp_path):
    from lvlm_lens.testing.tiny import build_tiny_checkpoint

    with pytest.raises(ValueError, match="unknown tiny kind"):
        build_tiny_checkpoint("llava-gemma", tmp_path)
