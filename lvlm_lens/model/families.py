"""The supported model families: what each one's HF class, decoder, image text and inputs are.

A family is a small declarative description. The one decoder reads its :class:`DecoderSpec`;
:mod:`~lvlm_lens.model.prepare` its :class:`ImageText`; :meth:`LVLMInput.to_hf` its
``hf_inputs``. Adding a family means adding an entry here (and a vision side if its encoder
is new), not a new model class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from lvlm_lens.model.config import DecoderSpec
from lvlm_lens.model.vision import LlavaVision, VisionSide
from lvlm_lens.model.vision_native import Gemma3Vision, Idefics3Vision, InternVision, QwenVision

#: What a raw prompt may always write for an image, whatever the family.
GENERIC_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Family:
    """One supported HF architecture.

    Attributes:
        name: Human name.
        hf_class: The ``transformers`` class of the whole model.
        text_types: Supported ``text_config.model_type`` of its language model.
        checkpoints: Real checkpoints of the family (documentation, error messages).
        hf_inputs: HF forward keywords beyond ids, mask, positions and ``pixel_values``.
        vision: The vision side class.
        size_dependent_layout: The number (and grid) of an image's tokens depends on its size
            (any- and native-resolution families).
    """

    name: str
    hf_class: str
    text_types: tuple[str, ...]
    checkpoints: tuple[str, ...]
    hf_inputs: tuple[str, ...] = ()
    vision: type[VisionSide] = LlavaVision
    size_dependent_layout: bool = True


_QWEN = dict(
    text_types=("qwen2_vl_text", "qwen2_5_vl_text"),
    hf_inputs=("image_grid_thw", "mm_token_type_ids"),
    vision=QwenVision,
)
#: The supported families by HF ``config.model_type``.
FAMILIES: dict[str, Family] = {
    "llava": Family(
        "LLaVA-1.5", "LlavaForConditionalGeneration", ("llama", "mistral", "qwen2"),
        ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"), size_dependent_layout=False,
    ),
    "llava_next": Family(
        "LLaVA-NeXT", "LlavaNextForConditionalGeneration", ("llama", "mistral", "qwen2"),
        ("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"),
        hf_inputs=("image_sizes",),
    ),
    "llava_onevision": Family(
        "LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration", ("qwen2",),
        ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
        hf_inputs=("image_sizes", "batch_num_images"),
    ),
    "qwen2_vl": Family(
        "Qwen2-VL", "Qwen2VLForConditionalGeneration",
        checkpoints=("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"), **_QWEN,
    ),
    "qwen2_5_vl": Family(
        "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration",
        checkpoints=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"), **_QWEN,
    ),
    "qwen3_vl": Family(
        "Qwen3-VL", "Qwen3VLForConditionalGeneration", text_types=("qwen3_vl_text",),
        checkpoints=("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct",
                     "Qwen/Qwen3-VL-8B-Instruct"),
        hf_inputs=_QWEN["hf_inputs"], vision=QwenVision,
    ),
    "internvl": Family(
        "InternVL", "InternVLForConditionalGeneration", ("qwen2", "llama", "qwen3"),
        ("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-2B-hf", "OpenGVLab/InternVL3-8B-hf"),
        vision=InternVision,
    ),
    "gemma3": Family(
        "Gemma 3", "Gemma3ForConditionalGeneration", ("gemma3_text",),
        ("google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"),
        hf_inputs=("token_type_ids",), vision=Gemma3Vision, size_dependent_layout=False,
    ),
    "idefics3": Family(
        "Idefics3 / SmolVLM", "Idefics3ForConditionalGeneration", ("llama",),
        ("HuggingFaceTB/SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-500M-Instruct",
         "HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceM4/Idefics3-8B-Llama3"),
        hf_inputs=("pixel_attention_mask",), vision=Idefics3Vision,
    ),
}  # fmt: skip


#: HF multimodal architectures we wrap, by ``config.model_type``.
SUPPORTED_LVLMS = tuple(FAMILIES)
#: HF language backbones we re-implement as a hooked decoder, by ``text_config.model_type``.
SUPPORTED_TEXT_MODELS = tuple(dict.fromkeys(t for f in FAMILIES.values() for t in f.text_types))
_TEXT_NAMES = {"llama": "Llama/Vicuna", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


def supported_list() -> str:
    """One line per family: name, model type, example checkpoints."""
    return "; ".join(
        f"{f.name} ({t}: e.g. {', '.join(f.checkpoints)})" for t, f in FAMILIES.items()
    )


def check_supported(config: Any) -> Family:
    """The family of an HF config; a clear error listing the supported ones otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({getattr(config, 'architectures', None)})"
            f": lvlm_lens supports {supported_list()}"
        )
    family = FAMILIES[model_type]
    text_type = getattr(config.text_config, "model_type", None)
    if text_type not in family.text_types:
        raise ValueError(
            f"unsupported language backbone {text_type!r} for {family.name}: lvlm_lens supports "
            + ", ".join(f"{t} ({_TEXT_NAMES.get(t, family.name)})" for t in family.text_types)
        )
    tc = config.text_config
    for flag in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(tc, flag, None) is not None:
            raise ValueError(f"{family.name} with {flag}={getattr(tc, flag)} is not supported")
    if getattr(tc, "use_bidirectional_attention", False):
        raise ValueError(f"{family.name} with use_bidirectional_attention=True is not supported")
    _check_rope(family, tc)
    return family


#: RoPE types whose frequencies change with the longest position of a call: HF's depend on the
#: batch an example is run in (and ``dynamic`` on the calls before), so per-example results,
#: prefix caches and batched masked runs would all disagree with a full batched run.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _check_rope(family: Family, tc: Any) -> None:
    """Refuse a length-dependent RoPE type (``text_config.rope_parameters['rope_type']``)."""
    params = getattr(tc, "rope_parameters", None) or {}
    per_type = params.values() if all(isinstance(v, dict) for v in params.values()) else [params]
    for p in per_type:
        rope_type = (p or {}).get("rope_type", "default")
        if any(t in rope_type for t in LENGTH_DEPENDENT_ROPE):
            raise ValueError(
                f"{family.name} with text_config.rope_parameters rope_type={rope_type!r} is not "
                "supported: its frequencies depend on the sequence length of the batch; "
                "supported: default, linear, llama3, yarn, proportional"
            )


def language_model(hf_model: nn.Module) -> nn.Module:
    """The HF language model (decoder layers, norm, embedding, rotary) inside a multimodal one:
    ``model.language_model``, or ``model.text_model`` where a family names it so (Idefics3)."""
    inner = hf_model.model
    return inner.language_model if hasattr(inner, "language_model") else inner.text_model


def decoder_spec(hf_model: nn.Module) -> DecoderSpec:
    """The :class:`DecoderSpec` of an HF model, read off its config and modules."""
    model_type = hf_model.config.model_type
    lm = language_model(hf_model)
    scale = float(getattr(lm.embed_tokens, "scalar_embed_scale", 1.0))
    if model_type in ("internvl", "idefics3"):  # a plain Qwen2 / Llama / Qwen3
        return DecoderSpec(qk_norm=hasattr(lm.layers[0].self_attn, "q_norm"))
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        return DecoderSpec(rotary="mrope")
    if model_type == "qwen3_vl":
        return DecoderSpec(qk_norm=True, rotary="mrope_interleaved", deepstack=True)
    if model_type == "gemma3":
        return DecoderSpec(
            norm_offset=1.0,
            sandwich_norms=True,
            qk_norm=True,
            embed_scale=scale,
            rope_per_layer_type=True,
            bidirectional_image=True,
        )
    return DecoderSpec()


@dataclass(frozen=True)
class ImageText:
    """How an image appears in a prompt and in the token ids.

    Attributes:
        placeholder: What a raw prompt holds per image in the family's own format (LLaVA
            ``<image>``, Qwen ``<|image_pad|>``, Gemma 3 ``<start_of_image>``).
        alias: What :data:`GENERIC_PLACEHOLDER` becomes in a raw prompt of this family (Qwen:
            ``<|vision_start|><|image_pad|><|vision_end|>``).
        expansion: What each placeholder becomes before tokenization, holding the image token
            once (Gemma 3: ``\\n\\n<start_of_image><image_soft_token><end_of_image>\\n\\n``);
            the image token is then repeated once per image embedding. Where it depends on the
            image (Idefics3's tiles and their markers) the vision side's ``placeholder_text``
            writes it per image around the placeholder.
        closers: Markers that may follow a placeholder and are not question text.
    """

    placeholder: str
    alias: str
    expansion: str
    closers: tuple[str, ...] = ()


def image_text(config: Any, tokenizer: Any) -> ImageText:
    """The :class:`ImageText` of a model, from its config's token ids and its tokenizer."""
    name = lambda i: tokenizer.convert_ids_to_tokens(int(i))  # noqa: E731
    token = name(config.image_token_id)
    if config.model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        start, end = name(config.vision_start_token_id), name(config.vision_end_token_id)
        return ImageText(token, f"{start}{token}{end}", token, (end,))
    if config.model_type == "gemma3":
        boi, eoi = name(config.boi_token_index), name(config.eoi_token_index)
        return ImageText(boi, boi, f"\n\n{boi}{token}{eoi}\n\n", (eoi,))
    if config.model_type == "internvl":
        start = getattr(tokenizer, "start_image_token", None) or "<img>"
        end = getattr(tokenizer, "end_image_token", None) or "</img>"
        return ImageText(token, token, f"{start}{token}{end}", (end,))
    return ImageText(token, token, token)
