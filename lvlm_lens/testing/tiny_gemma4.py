"""The tiny random Gemma 4 checkpoint (``Gemma4ForConditionalGeneration``), built offline.

Shaped like ``google/gemma-4-e2b-it`` and the larger Gemma 4 models: per-layer input
embeddings (PLE), q / k / v norms, a layer scalar per layer (drawn off 1), five layers of
sliding-window and global attention (``s g s s g``, the last global, as HF requires) whose
global layers have twice the head width and a proportional rope over a quarter of it, the
last two layers reading the keys and values of layers 2 and 1 (``num_kv_shared_layers=2``),
bidirectional attention within an image on the sliding layers
(``use_bidirectional_attention="vision"``, as the larger models), capped logits, tied
embeddings; no audio tower. ``enable_moe_block=True`` (with ``num_experts``,
``top_k_experts``, ``moe_intermediate_size``) gives the MoE variant (as
``google/gemma-4-26B-A4B-it``): experts beside each layer's dense MLP, its router's scales
drawn off 1. The image processor keeps each image's aspect ratio at a budget of
:data:`G4_SOFT_TOKENS` tokens of ``3x3`` pooled ``2x2``-px patches, so images of different
shapes give different grids. The folder holds the tokenizer and the PIL image processor:
``Gemma4Processor`` also wants a video processor (torchvision) and an audio feature extractor.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Gemma4Config, Gemma4ForConditionalGeneration
from transformers.models.gemma4 import Gemma4ImageProcessorPil

from lvlm_lens.testing.tiny_save import tiny_builder

#: The tiny kind built here.
GEMMA4_KIND = "gemma4"
#: Patch side (px), pooling kernel and soft-token budget per image (the smallest HF allows).
G4_PATCH, G4_POOL, G4_SOFT_TOKENS = 2, 3, 70
#: Gemma 4's special tokens by the tokenizer attribute HF's processor reads (the tiny's names).
G4_SPECIALS = {
    "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
    "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>",
    "video_token": "<|video|>",
}  # fmt: skip
G4_MORE = ("<|turn>", "<turn|>")
#: Gemma 4's chat template at its core: ``<bos><|turn>user\n...<turn|>\n<|turn>model\n``, the
#: image token where the message puts an image.
G4_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<|turn>' + role + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<turn|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\n' }}{% endif %}"
)
#: Layer types of the tiny decoder (HF forces the last one global).
G4_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention",
                  "sliding_attention", "full_attention"]  # fmt: skip


def gemma4_tokenizer(chat_template: bool) -> Any:
    """The tiny word-level tokenizer with Gemma 4's special tokens (and chat template)."""
    from lvlm_lens.testing.tiny import TINY_WORDS, build_tiny_tokenizer
    from lvlm_lens.testing.tiny_families import EXTRA_WORDS

    return build_tiny_tokenizer(
        chat_template=G4_CHAT_TEMPLATE if chat_template else None,
        words=TINY_WORDS + EXTRA_WORDS, named_specials=G4_SPECIALS, more_specials=G4_MORE,
    )  # fmt: skip


def gemma4_config(tokenizer: Any, text: dict[str, Any], vision: dict[str, Any]) -> Any:
    """A tiny Gemma 4 config (``text``: text fields; ``vision``: vision fields, each over the
    tiny default)."""
    from lvlm_lens.testing.tiny_families import tiny_text_kwargs

    tied = text.pop("tie_word_embeddings", True)
    text = tiny_text_kwargs(tokenizer, **{
        "model_type": "gemma4_text", "num_hidden_layers": len(G4_LAYER_TYPES),
        "num_key_value_heads": 2, "head_dim": 16, "global_head_dim": 32, "sliding_window": 8,
        "layer_types": list(G4_LAYER_TYPES), "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": len(tokenizer),
        "final_logit_softcapping": 30.0, "use_bidirectional_attention": "vision",
        "num_kv_shared_layers": 2,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                               "rope_theta": 1000000.0},
        },
        "tie_word_embeddings": tied, **text,
    })  # fmt: skip
    vision = {**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                     patch_size=G4_PATCH, pooling_kernel_size=G4_POOL,
                     position_embedding_size=256), **vision}  # fmt: skip
    ids = {name: tokenizer.convert_tokens_to_ids(t) for name, t in G4_SPECIALS.items()}
    config = Gemma4Config(
        text_config=text, vision_config={"model_type": "gemma4_vision", **vision},
        audio_config=None, image_token_id=ids["image_token"], boi_token_id=ids["boi_token"],
        eoi_token_id=ids["eoi_token"], video_token_id=ids["video_token"],
        audio_token_id=ids["audio_token"], boa_token_id=ids["boa_token"],
        eoa_token_index=ids["eoa_token"], tie_word_embeddings=tied,
    )  # fmt: skip
    config._attn_implementation = "eager"
    return config


def gemma4_image_processor() -> Gemma4ImageProcessorPil:
    """Gemma 4's PIL image processor at the tiny patch size and token budget."""
    return Gemma4ImageProcessorPil(patch_size=G4_PATCH, pooling_kernel_size=G4_POOL,
                                   max_soft_tokens=G4_SOFT_TOKENS)  # fmt: skip


def _draw_off_one(model: torch.nn.Module) -> None:
    """Every decoder layer's ``layer_scalar`` and, with experts, its router's ``scale`` and
    ``per_expert_scale`` off their default 1 (real checkpoints learn them)."""
    for layer in model.model.language_model.layers:
        layer.layer_scalar.uniform_(0.5, 1.5)
        if getattr(layer, "router", None) is not None:
            layer.router.scale.uniform_(0.5, 1.5)
            layer.router.per_expert_scale.uniform_(0.5, 1.5)


build_gemma4_checkpoint = tiny_builder(
    "Gemma 4", Gemma4ForConditionalGeneration,
    gemma4_tokenizer, gemma4_config, gemma4_image_processor, init=_draw_off_one,
)
"""Builds and saves the tiny Gemma 4 (see :func:`~.tiny.build_tiny_checkpoint`)."""
