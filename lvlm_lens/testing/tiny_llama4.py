"""The tiny random Llama 4 checkpoint (``Llama4ForConditionalGeneration``), built offline.

Shaped like ``meta-llama/Llama-4-Maverick-17B-128E-Instruct`` at a tiny size: four decoder
layers, dense and sparse MLPs interleaved (``moe_layers`` 1 and 3: :data:`N_EXPERTS` experts of
width :data:`D_EXPERT`, :data:`TOP_K` per token, a shared expert), a NoPE layer every fourth
(layer 3, full attention with temperature tuning), chunked attention of
:data:`CHUNK` positions on the RoPE layers (shorter than the prompts, so chunking matters), q/k
L2 norms, grouped-query attention, untied embeddings; a Llama 4 vision model over
:data:`TILE`-px tiles of :data:`PATCH`-px patches, pixel shuffle 0.5, up to :data:`MAX_TILES`
tiles per image. The folder holds the tokenizer and HF's image-processor config, which the
family's PIL ``Llama4ImageProcessor`` reads (HF's needs torchvision).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import Llama4Config, Llama4ForConditionalGeneration

from lvlm_lens.testing.tiny_save import save_random, set_fields

#: The tiny kind built here.
LLAMA4_KIND = "llama4"
#: Experts, experts per token, one expert's width, the dense MLP's width.
N_EXPERTS, TOP_K, D_EXPERT, D_DENSE = 4, 2, 32, 96
#: Chunk of the chunked-attention layers; tile and patch sizes; most tiles per image.
CHUNK, TILE, PATCH, MAX_TILES = 8, 28, 7, 4
#: Image tokens per tile: 4x4 patches pixel-shuffled by 0.5.
TOKENS_PER_TILE = (TILE // PATCH // 2) ** 2
#: The patch (image) token and the processor's other markers.
PATCH_TOKEN, IMAGE_START, IMAGE_END = "<|patch|>", "<|image_start|>", "<|image_end|>"
LLAMA4_SPECIALS = ("<|image|>", IMAGE_START, IMAGE_END, "<|tile_x_separator|>",
                   "<|tile_y_separator|>", "<|header_start|>", "<|header_end|>", "<|eot|>")
#: Llama 4's chat template, reduced to text and image content.
LLAMA4_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|header_start|>' + message['role'] + '<|header_end|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|eot|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\n\n' }}{% endif %}"
)


def llama4_tokenizer(chat_template: bool) -> Any:
    """The tiny word-level tokenizer with Llama 4's image tokens (and chat template)."""
    from lvlm_lens.testing.tiny import TINY_WORDS, build_tiny_tokenizer
    from lvlm_lens.testing.tiny_families import EXTRA_WORDS

    return build_tiny_tokenizer(
        chat_template=LLAMA4_CHAT_TEMPLATE if chat_template else None,
        words=TINY_WORDS + EXTRA_WORDS + tuple(w for w in ("assistant", "user")
                                               if w not in TINY_WORDS),
        named_specials={"image_token": PATCH_TOKEN}, more_specials=LLAMA4_SPECIALS,
    )  # fmt: skip


def llama4_config(tokenizer: Any, text: dict[str, Any], vision: dict[str, Any]) -> Llama4Config:
    """A tiny Llama 4 config (``text`` / ``vision``: overrides of its text / vision fields)."""
    from lvlm_lens.testing.tiny_families import tiny_text_kwargs

    text = tiny_text_kwargs(tokenizer, **{
        "num_hidden_layers": 4, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": D_EXPERT, "intermediate_size_mlp": D_DENSE,
        "num_local_experts": N_EXPERTS, "num_experts_per_tok": TOP_K, "moe_layers": [1, 3],
        "no_rope_layers": [1, 1, 1, 0], "attention_chunk_size": CHUNK, "use_qk_norm": True,
        "attn_temperature_tuning": True, "floor_scale": 8192, "attn_scale": 0.1,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, **text,
    })  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": TILE, "patch_size": PATCH,
              "pixel_shuffle_ratio": 0.5, "projector_input_dim": 64, "projector_output_dim": 64,
              "vision_output_dim": 64, "rope_parameters": {"rope_type": "default",
                                                           "rope_theta": 10000.0},
              **vision}  # fmt: skip
    ids = tokenizer.convert_tokens_to_ids
    config = Llama4Config(text_config=text, vision_config=vision,
                          image_token_index=ids(PATCH_TOKEN), boi_token_index=ids(IMAGE_START),
                          eoi_token_index=ids(IMAGE_END), tie_word_embeddings=False)  # fmt: skip
    config._attn_implementation = "eager"
    return config


def llama4_image_processor_config() -> dict[str, Any]:
    """HF's ``Llama4ImageProcessor`` fields at the tiny tile size (``preprocessor_config.json``;
    read by the family's PIL reimplementation, as HF's needs torchvision)."""
    return {"image_processor_type": "Llama4ImageProcessor", "size": {"height": TILE, "width": TILE},
            "max_patches": MAX_TILES, "resize_to_max_canvas": False, "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3, "resample": 2, "do_resize": True, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True}  # fmt: skip


def build_llama4_checkpoint(
    folder: Path,
    *,
    seed: int,
    chat_template: bool,
    vision: dict[str, Any] | None = None,
    lvlm: dict[str, Any] | None = None,
    processor: dict[str, Any] | None = None,
    **text_overrides: Any,
) -> Path:
    """Builds and saves the tiny Llama 4 (see :func:`~.tiny.build_tiny_checkpoint`)."""
    tokenizer = llama4_tokenizer(chat_template)
    config = set_fields(llama4_config(tokenizer, dict(text_overrides), dict(vision or {})), lvlm)
    image_processor = {**llama4_image_processor_config(), **(processor or {})}
    save_random(folder, Llama4ForConditionalGeneration, config, seed, tokenizer)
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
    return folder
