"""The tiny random GLM-4.1V checkpoint (``Glm4vForConditionalGeneration``), built offline.

Shaped like ``zai-org/GLM-4.1V-9B-Thinking`` at a tiny size: a GLM-4 decoder with grouped-query
attention (16 heads per K/V head there, 2 here), q/k/v biases, partial RoPE over half of
``d_head`` rotating adjacent pairs, 3-D ``(t, h, w)`` sections of its frequencies
(``mrope_section``, the real ``[8, 12, 12]`` of 32 scaled to ``[2, 1, 1]`` of 4), sandwich norms
and a fused ``gate_up_proj`` MLP, untied embeddings; GLM's vision tower (2-D RoPE, position
embeddings interpolated to the grid, 2x2 downsampling convolution and gated merger) over
native-resolution patches. HF's ``Glm4vProcessor`` needs its video processor, hence
torchvision, so the folder holds the tokenizer and the PIL image processor; its expansion rule
(each ``<|image|>`` becomes ``grid.prod() // merge**2`` copies) is tested against HF's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vMoeConfig,
    Glm4vMoeForConditionalGeneration,
)
from transformers.models.glm4v import Glm4vImageProcessorPil

from lvlm_lens.testing.tiny_save import save_random, set_fields

#: The tiny kinds built here: GLM-4.1V and GLM-4.5V (its MoE sibling).
GLM4V_KIND, GLM4V_MOE_KIND = "glm4v", "glm4v-moe"
#: GLM-4.5V's sparse MLP at a tiny size (the real: 128 experts of 1408, top 8, one shared
#: expert, the first layer dense): 8 experts of 32, top 2; two groups with one eligible and
#: scaled routed weights are switched on so that the group-limited choice and the scale are
#: tested (the router's choice bias is drawn off zero by the builder).
GLM4V_MOE = dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                 n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1,
                 routed_scaling_factor=2.5, norm_topk_prob=True)  # fmt: skip
#: GLM-4.1V's special tokens by the attribute names the tiny tokenizer gives them.
GLM4V_SPECIALS = {
    "image_token": "<|image|>",
    "video_token": "<|video|>",
    "boi_token": "<|begin_of_image|>",
    "eoi_token": "<|end_of_image|>",
    "bov_token": "<|begin_of_video|>",
    "eov_token": "<|end_of_video|>",
}
#: Its role markers.
GLM4V_ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
#: GLM-4.1V's template, shortened (no ``[gMASK]<sop>`` opening, no thinking): ``<|role|>\\n``
#: turns, an image as ``<|begin_of_image|><|image|><|end_of_image|>``.
GLM4V_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
#: Vision patch side and merge: a ``H x W`` image gives ``(H/2) x (W/2)`` patches merged 2x2
#: (a 20x28 image: 5x7 tokens).
GLM4V_PATCH, GLM4V_MERGE = 2, 2
#: The 3-D sections of the 4 rotary frequencies (half of d_head 16 is rotated).
GLM4V_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
              "partial_rotary_factor": 0.5}  # fmt: skip


def glm4v_tokenizer(chat_template: bool) -> Any:
    """The tiny word-level tokenizer with GLM-4.1V's special tokens (and chat template)."""
    from lvlm_lens.testing.tiny import TINY_WORDS, build_tiny_tokenizer
    from lvlm_lens.testing.tiny_families import EXTRA_WORDS

    return build_tiny_tokenizer(
        chat_template=GLM4V_CHAT_TEMPLATE if chat_template else None,
        words=TINY_WORDS + EXTRA_WORDS, named_specials=GLM4V_SPECIALS, more_specials=GLM4V_ROLES,
    )  # fmt: skip


def glm4v_image_processor(
    patch_size: int = GLM4V_PATCH, tokens: int = 64
) -> Glm4vImageProcessorPil:
    """GLM's PIL image processor at the tiny patch size (or ``patch_size``), up to ``tokens``
    merged tokens per image (its pixel budget counts the two temporal copies of a still
    image)."""
    factor = patch_size * GLM4V_MERGE
    return Glm4vImageProcessorPil(
        size={"shortest_edge": factor * factor, "longest_edge": 2 * tokens * factor * factor},
        patch_size=patch_size, merge_size=GLM4V_MERGE, temporal_patch_size=2,
    )  # fmt: skip


def glm4v_config(
    tokenizer: Any, text: dict[str, Any], vision: dict[str, Any], moe: bool = False
) -> Glm4vConfig | Glm4vMoeConfig:
    """A tiny GLM-4.1V config (``text`` / ``vision``: overrides of the text / vision fields);
    with ``moe`` GLM-4.5V's (:data:`GLM4V_MOE`)."""
    from lvlm_lens.testing.tiny_families import tiny_text_kwargs

    tied = text.pop("tie_word_embeddings", False)  # untied, as GLM-4.1V-9B and GLM-4.5V
    text = tiny_text_kwargs(tokenizer, **{"num_key_value_heads": 2, **(GLM4V_MOE if moe else {}),
                                          **text})  # fmt: skip
    text.setdefault("rope_parameters", dict(GLM4V_ROPE))
    vision = {**dict(depth=2, num_heads=2, hidden_size=32, intermediate_size=64,
                     out_hidden_size=text["hidden_size"], patch_size=GLM4V_PATCH, image_size=16,
                     spatial_merge_size=GLM4V_MERGE, temporal_patch_size=2), **vision}  # fmt: skip
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in GLM4V_SPECIALS.items()}
    config = (Glm4vMoeConfig if moe else Glm4vConfig)(
        text_config=text, vision_config=vision, tie_word_embeddings=tied,
        image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        image_start_token_id=ids["boi_token"], image_end_token_id=ids["eoi_token"],
        video_start_token_id=ids["bov_token"], video_end_token_id=ids["eov_token"],
    )  # fmt: skip
    config._attn_implementation = "eager"
    return config


def build_glm4v_checkpoint(
    folder: Path,
    *,
    moe: bool = False,
    seed: int,
    chat_template: bool,
    vision: dict[str, Any] | None = None,
    lvlm: dict[str, Any] | None = None,
    processor: dict[str, Any] | None = None,
    **text_overrides: Any,
) -> Path:
    """Builds and saves the tiny GLM-4.1V, or with ``moe`` GLM-4.5V (see
    :func:`~.tiny.build_tiny_checkpoint`)."""
    tokenizer = glm4v_tokenizer(chat_template)
    config = set_fields(glm4v_config(tokenizer, dict(text_overrides), dict(vision or {}), moe),
                        lvlm)  # fmt: skip
    image_processor = set_fields(glm4v_image_processor(), processor)

    def choice_bias(model: torch.nn.Module) -> None:  # the router's choice bias: off zero
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.1)

    cls = Glm4vMoeForConditionalGeneration if moe else Glm4vForConditionalGeneration
    return save_random(folder, cls, config, seed, tokenizer, image_processor, init=choice_bias)
