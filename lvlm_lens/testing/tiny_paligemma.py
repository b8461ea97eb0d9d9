"""The tiny random PaliGemma 2 checkpoint: a SigLIP tower (one fixed square of patches), a
linear projector and a Gemma 2 decoder with everything that makes it Gemma 2 switched on
(attention and final logit softcapping, ``query_pre_attn_scalar`` != ``d_head``, alternating
sliding / global layers with a window shorter than the prefix, sandwich ``1 + w`` norms,
grouped-query attention, tied embeddings), shaped like ``google/paligemma2-3b-pt-224`` at a
tiny size. Its processor is HF's ``PaliGemmaProcessor`` with the PIL SigLIP image processor
(no torchvision), saved whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
from transformers.models.siglip import SiglipImageProcessorPil

#: Image side and patch side: a 16x16 square of 4x4 patches gives 16 image tokens.
PG_IMAGE, PG_PATCH = 16, 4


def build_paligemma_checkpoint(folder: Path, *, seed: int, vision: dict | None = None,
                               **text_overrides: Any) -> Path:
    """Builds and saves the tiny PaliGemma 2 checkpoint (``text_overrides``: Gemma 2 fields)."""
    from lvlm_lens.testing.tiny import _randomize_, build_tiny_tokenizer
    from lvlm_lens.testing.tiny_families import tiny_text_kwargs

    tokenizer = build_tiny_tokenizer(chat_template=None)
    text = tiny_text_kwargs(tokenizer, **{
        "model_type": "gemma2", "num_hidden_layers": 2, "num_key_value_heads": 2,
        "head_dim": 16, "query_pre_attn_scalar": 24, "attn_logit_softcapping": 1.0,
        "final_logit_softcapping": 2.0, "sliding_window": 6,
        "hidden_activation": "gelu_pytorch_tanh", **text_overrides,
    })  # fmt: skip
    n_tokens = (PG_IMAGE // PG_PATCH) ** 2
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=PG_IMAGE, patch_size=PG_PATCH,
                           projection_dim=text["hidden_size"], **(vision or {})),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=text["hidden_size"],
    )
    config.text_config.num_image_tokens = n_tokens
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PaliGemmaForConditionalGeneration(config)
        _randomize_(model)
        with torch.no_grad():  # Gemma's 1 + w norms: move w off 0
            for name, param in model.named_parameters():
                if "norm" in name and name.endswith("weight") and "vision_tower" not in name:
                    param.normal_(0.0, 0.2)
    model.eval().save_pretrained(folder)
    images = SiglipImageProcessorPil(size={"height": PG_IMAGE, "width": PG_IMAGE})
    images.image_seq_length = n_tokens
    PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder
