"""The supported model families, one module each: what each one's HF class, decoder, image
text, inputs and vision side are.

A family is a small declarative description (:class:`Family`, in :mod:`.base`) in its own
module, which holds everything that differs for it. The one decoder reads its
:class:`~lvlm_lens.model.config.DecoderSpec`; :mod:`~lvlm_lens.model.prepare` its
:class:`ImageText`; :meth:`LVLMInput.to_hf` its ``hf_inputs``. Adding a family means adding a
module here (and its entry in :data:`MODULES`) with its tests, not a new model class.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lvlm_lens.model.config import DecoderSpec
from lvlm_lens.model.families import base as _base
from lvlm_lens.model.families import (
    gemma3,
    gemma4,
    glm4v,
    idefics3,
    internvl,
    llama4,
    llava,
    llava_next,
    llava_onevision,
    llava_onevision1_5,
    mistral3,
    mllama,
    paligemma,
    qwen2_vl,
    qwen3_5,
    qwen3_5_moe,
    qwen3_vl,
    qwen3_vl_moe,
    smolvlm,
)
from lvlm_lens.model.families.base import (
    GENERIC_PLACEHOLDER,
    LENGTH_DEPENDENT_ROPE,
    WINDOW_ON_EVERY_LAYER,
    Family,
    ImageText,
    default_decoder,
    default_image_text,
    language_model,
)

#: The family modules, in the order of :data:`FAMILIES`.
MODULES = (llava, llava_next, llava_onevision, qwen2_vl, qwen3_vl, internvl, gemma3, idefics3)
MODULES += (qwen3_vl_moe,)
MODULES += (llava_onevision1_5,)
MODULES += (qwen3_5, qwen3_5_moe, paligemma, smolvlm)
MODULES += (glm4v,)
MODULES += (llama4,)
MODULES += (mllama,)
MODULES += (mistral3,)
MODULES += (gemma4,)
#: The supported families by HF ``config.model_type``.
FAMILIES: dict[str, Family] = {t: f for m in MODULES for t, f in m.BY_MODEL_TYPE.items()}
#: HF multimodal architectures we wrap, by ``config.model_type``.
SUPPORTED_LVLMS = tuple(FAMILIES)
#: HF language backbones we re-implement as a hooked decoder, by ``text_config.model_type``.
SUPPORTED_TEXT_MODELS = tuple(dict.fromkeys(t for f in FAMILIES.values() for t in f.text_types))


def supported_list() -> str:
    """One line per family: name, model type, example checkpoints."""
    return _base.supported_list(FAMILIES)


def check_supported(config: Any) -> Family:
    """The family of an HF config; a clear error listing the supported ones otherwise."""
    return _base.check_supported(config, FAMILIES)


def decoder_spec(hf_model: nn.Module) -> DecoderSpec:
    """The :class:`DecoderSpec` of an HF model, read off its config and modules."""
    family = FAMILIES.get(hf_model.config.model_type)
    return (family.decoder_spec if family is not None else default_decoder)(hf_model)


def image_text(config: Any, tokenizer: Any) -> ImageText:
    """The :class:`ImageText` of a model, from its config's token ids and its tokenizer."""
    family = FAMILIES.get(config.model_type)
    return (family.image_text if family is not None else default_image_text)(config, tokenizer)


__all__ = [
    "FAMILIES",
    "GENERIC_PLACEHOLDER",
    "LENGTH_DEPENDENT_ROPE",
    "MODULES",
    "SUPPORTED_LVLMS",
    "SUPPORTED_TEXT_MODELS",
    "WINDOW_ON_EVERY_LAYER",
    "Family",
    "ImageText",
    "check_supported",
    "decoder_spec",
    "image_text",
    "language_model",
    "supported_list",
]
