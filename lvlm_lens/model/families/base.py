"""What every family module shares: the :class:`Family` and :class:`ImageText` descriptions,
their default builders, and the checks that hold for every family.

A family module (one per HF architecture, beside this one) holds what differs: its
:class:`Family` entries, its :class:`~lvlm_lens.model.config.DecoderSpec` and
:class:`ImageText` builders where the defaults here do not fit, and its vision side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from lvlm_lens.model.config import DecoderSpec
from lvlm_lens.model.vision import LlavaVision, VisionSide

#: What a raw prompt may always write for an image, whatever the family.
GENERIC_PLACEHOLDER = "<image>"


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
        prompt_end: Appended to every prompt before tokenization (PaliGemma's processor ends
            each with ``\n``); ``LVLMInput.texts`` holds the prompts without it.
        refused: Markers of inputs that are not supported (GLM-4.1V's video markers): a prompt
            holding one is refused.
        refused_audio: Audio markers (Gemma 4's audio token), refused as ``refused`` is.
        bos_in_text: The processor writes the BOS token into a prompt that holds none, after
            its leading placeholders (Llama 3.2 Vision's ``MllamaProcessor``), and the
            tokenizer then adds its own BOS as well.
    """

    placeholder: str
    alias: str
    expansion: str
    closers: tuple[str, ...] = ()
    prompt_end: str = ""
    refused: tuple[str, ...] = ()
    bos_in_text: bool = False
    refused_audio: tuple[str, ...] = ()


def token_name(tokenizer: Any, token_id: Any) -> str:
    """The token string of an id."""
    return tokenizer.convert_ids_to_tokens(int(token_id))


def default_image_text(config: Any, tokenizer: Any) -> ImageText:
    """The image token alone, as placeholder, alias and expansion (LLaVA, Idefics3)."""
    token = token_name(tokenizer, config.image_token_id)
    return ImageText(token, token, token)


def language_model(hf_model: nn.Module) -> nn.Module:
    """The HF language model (decoder layers, norm, embedding, rotary) inside a multimodal one:
    ``model.language_model``, or ``model.text_model`` where a family names it so (Idefics3);
    ``language_model.model`` of a model with no ``model`` (Llama 4)."""
    if not hasattr(hf_model, "model"):
        return hf_model.language_model.model
    inner = hf_model.model
    return inner.language_model if hasattr(inner, "language_model") else inner.text_model


def default_decoder(hf_model: nn.Module) -> DecoderSpec:
    """A plain Llama-style decoder (LLaVA's Llama / Mistral / Qwen2)."""
    return DecoderSpec()


def qk_norm_if_present(hf_model: nn.Module) -> DecoderSpec:
    """A plain decoder, with q/k norms where the backbone has them (Qwen3 under InternVL)."""
    return DecoderSpec(qk_norm=hasattr(language_model(hf_model).layers[0].self_attn, "q_norm"))


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
        cropped_grid: The image processor center-crops every image to the tower's square and
            it gives one fixed ``tile_grid x tile_grid`` grid of patches (LLaVA-1.5), so a
            pixel mask of the image maps onto the patches and a figure of the grid may show
            the crop.
        decoder_spec: The :class:`DecoderSpec` of an HF model of the family.
        image_text: The :class:`ImageText` of a model, from its config and tokenizer.
        tiny_kinds: The ``lvlm_lens.testing.build_tiny_checkpoint`` kinds of the family (the
            tiny random checkpoints its tests run on).
        hf_extra: ``f(inp, kwargs) -> kwargs``: the family's last word on :meth:`LVLMInput.to_hf`
            (PaliGemma: token types of its prefix, positions from 1).
        own_mask: The HF model builds its text model's mask itself, so the text config's
            ``use_bidirectional_attention`` (PaliGemma's, set for backward compatibility) is
            not refused.
        load_image_processor: ``f(folder) -> image processor``, where the family's own replaces
            ``AutoImageProcessor`` (Llama 4's: HF's needs torchvision).
    """

    name: str
    hf_class: str
    text_types: tuple[str, ...]
    checkpoints: tuple[str, ...]
    hf_inputs: tuple[str, ...] = ()
    vision: type[VisionSide] = LlavaVision
    size_dependent_layout: bool = True
    cropped_grid: bool = False
    decoder_spec: Callable[[nn.Module], DecoderSpec] = default_decoder
    image_text: Callable[[Any, Any], ImageText] = default_image_text
    tiny_kinds: tuple[str, ...] = ()
    hf_extra: Callable[[Any, dict], dict] | None = None
    own_mask: bool = False
    load_image_processor: Callable[[str], Any] | None = None


#: Display names of the language backbones (``text_config.model_type``) in error messages.
TEXT_NAMES = {"llama": "Llama/Vicuna", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
#: Language backbones whose HF model applies ``sliding_window`` to every layer (it has no
#: ``layer_types``): a property of the text model, not of a family.
WINDOW_ON_EVERY_LAYER = ("mistral",)

#: Language backbones whose HF attention and logits apply ``attn_logit_softcapping`` /
#: ``final_logit_softcapping`` (read by :func:`softcaps`); other backbones' HF models ignore
#: the fields (Gemma 3's as well), so a config setting them there is refused.
SOFTCAP_TEXT_MODELS = ("gemma2", "gemma4_text")


def softcaps(tc: Any) -> dict[str, float | None]:
    """The :class:`DecoderSpec` softcapping fields of a Gemma 2 text config."""
    return {"attn_softcap": getattr(tc, "attn_logit_softcapping", None),
            "logit_softcap": getattr(tc, "final_logit_softcapping", None)}


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


def supported_list(families: dict[str, Family]) -> str:
    """One line per family: name, model type, example checkpoints."""
    return "; ".join(
        f"{f.name} ({t}: e.g. {', '.join(f.checkpoints)})" for t, f in families.items()
    )


def check_supported(config: Any, families: dict[str, Family]) -> Family:
    """The family of an HF config; a clear error listing the supported ones otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in families:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({getattr(config, 'architectures', None)})"
            f": lvlm_lens supports {supported_list(families)}"
        )
    family = families[model_type]
    text_type = getattr(config.text_config, "model_type", None)
    if text_type not in family.text_types:
        raise ValueError(
            f"unsupported language backbone {text_type!r} for {family.name}: lvlm_lens supports "
            + ", ".join(f"{t} ({TEXT_NAMES.get(t, family.name)})" for t in family.text_types)
        )
    tc = config.text_config
    for flag in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(tc, flag, None) is not None and text_type not in SOFTCAP_TEXT_MODELS:
            raise ValueError(f"{family.name} with {flag}={getattr(tc, flag)} is not supported")
    if getattr(tc, "use_bidirectional_attention", False) and not family.own_mask:
        raise ValueError(f"{family.name} with use_bidirectional_attention=True is not supported")
    _check_rope(family, tc)
    return family
