"""The tiny random Llama 3.2 Vision checkpoint (``MllamaForConditionalGeneration``), built offline.

Shaped like ``meta-llama/Llama-3.2-11B-Vision``: a Llama decoder with grouped-query attention
and gated cross-attention layers at two depths (:data:`CROSS_LAYERS`), a tiled vision model
(local and gated global layers, aspect-ratio embeddings, intermediate-layer features
concatenated) over up to :data:`MAX_TILES` tiles of :data:`TILE` px, a linear projector. As
in the real checkpoint the ``<|image|>`` token's id is past the logits (the embedding table has
8 rows more than ``lm_head``) and the tokenizer adds BOS itself. Every gate is drawn off zero
(HF initialises them to zero, which would hide the image). The folder holds the whole
``MllamaProcessor`` (its PIL image processor needs no torchvision).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
from transformers.models.mllama import MllamaImageProcessorPil

from lvlm_lens.testing.tiny_save import save_random, set_fields

#: The tiny kind built here.
MLLAMA_KIND = "mllama"
#: The cross-attention layers of the 5-layer tiny decoder.
CROSS_LAYERS = [1, 3]
#: Tile side (px), patch side (px) and the most tiles of one image.
TILE, PATCH, MAX_TILES = 16, 4, 4
#: Image token.
IMAGE_TOKEN = "<|image|>"
#: Parameter names of the gates (HF initialises them to zero).
GATES = ("cross_attn_attn_gate", "cross_attn_mlp_gate", "gate_attn", "gate_ffn", "gate")


def mllama_processor() -> MllamaProcessor:
    """The tiny word-level tokenizer with ``<|image|>`` as its last token, and the PIL image
    processor at the tiny tile size."""
    from lvlm_lens.testing.tiny import TINY_WORDS, build_tiny_tokenizer
    from lvlm_lens.testing.tiny_families import EXTRA_WORDS

    tokenizer = build_tiny_tokenizer(words=TINY_WORDS + EXTRA_WORDS,
                                     named_specials={"image_token": IMAGE_TOKEN})  # fmt: skip
    image_processor = MllamaImageProcessorPil(
        size={"height": TILE, "width": TILE}, max_image_tiles=MAX_TILES,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def mllama_config(tokenizer: Any, text: dict[str, Any], vision: dict[str, Any]) -> MllamaConfig:
    """A tiny Mllama config (``text`` / ``vision``: overrides of the text / vision fields)."""
    from lvlm_lens.testing.tiny_families import tiny_text_kwargs

    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id != len(tokenizer) - 1:
        raise ValueError(f"{IMAGE_TOKEN} must be the tokenizer's last token")
    text = tiny_text_kwargs(tokenizer, **{"num_hidden_layers": 5, "num_key_value_heads": 2,
                                          "cross_attention_layers": CROSS_LAYERS,
                                          "rope_parameters": {"rope_type": "default",
                                                              "rope_theta": 10000.0},
                                          **text})  # fmt: skip
    text["vocab_size"] = image_id  # as the real: the image id is past the logits
    vision = {**dict(hidden_size=32, num_hidden_layers=2, num_global_layers=1,
                     attention_heads=2, intermediate_size=64, vision_output_dim=96,
                     image_size=TILE, patch_size=PATCH, max_num_tiles=MAX_TILES,
                     intermediate_layers_indices=[0, 1]), **vision}  # fmt: skip
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_id)
    config._attn_implementation = "eager"
    return config


def build_mllama_checkpoint(
    folder: Path,
    *,
    seed: int,
    chat_template: bool,
    vision: dict[str, Any] | None = None,
    lvlm: dict[str, Any] | None = None,
    processor: dict[str, Any] | None = None,
    **text_overrides: Any,
) -> Path:
    """Builds and saves the tiny Llama 3.2 Vision (see :func:`~.tiny.build_tiny_checkpoint`;
    no chat template: ``chat_template`` is ignored)."""
    proc = mllama_processor()
    config = set_fields(mllama_config(proc.tokenizer, dict(text_overrides), dict(vision or {})),
                        lvlm)  # fmt: skip
    set_fields(proc.image_processor, processor)

    def gates(model: torch.nn.Module) -> None:  # HF starts the tanh gates at 0: draw them
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] in GATES:
                param.normal_(0.0, 1.0)

    return save_random(folder, MllamaForConditionalGeneration, config, seed, proc, init=gates)
