"""Tiny random HF LLaVA-family checkpoints, built offline for tests.

Each checkpoint is a genuine transformers model folder (config, safetensors, tokenizer, image
processor) that loads through the same ``from_pretrained`` path as the real models, but with a
2-layer vision tower and a 2-layer, 64-wide decoder so that everything runs in well under a
second on a CPU.

Tokenization: a word-level vocabulary (``TINY_WORDS`` plus the special tokens). The
pre-tokenizer keeps ``"\\n"`` as a token of its own, splits words (``\\w+``) from single
punctuation characters and drops all other whitespace, so ``"USER: <image>\\nwhat"`` becomes
``<s> USER : <image> \\n what``. Unknown words map to ``<unk>``; ``<s>`` is prepended by the
post-processor. The special tokens (``<image>``, ``<video>``, ``<|im_start|>``, ``<|im_end|>``
included) are the same for every kind, so all kinds share one vocabulary.

The models are built with eager attention, but transformers does not save that choice: pass
``attn_implementation="eager"`` to ``from_pretrained`` where it matters (the default is SDPA).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.clip import CLIPImageProcessorPil
from transformers.models.llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision import LlavaOnevisionImageProcessorPil

from lvlm_lens.hf_parts.tokenizer import (
    LLAVA_CHAT_TEMPLATE,
    word_level_tokenizer,
)
from lvlm_lens.testing.tiny_families import (
    FAMILY_KINDS,
    build_family_checkpoint,
    tiny_text_kwargs,
)
from lvlm_lens.testing.tiny_more import BUILDERS, MORE_KINDS
from lvlm_lens.testing.tiny_paligemma import build_paligemma_checkpoint

#: The LLaVA families built here: LLaVA-1.5 (Llama), LLaVA-NeXT (Mistral, Vicuna) and
#: LLaVA-OneVision (Qwen2).
LLAVA_KINDS = ("llava-llama", "llava-next-mistral", "llava-next-vicuna", "llava-onevision-qwen2")
#: Every kind :func:`build_tiny_checkpoint` builds: those and ``tiny_families.FAMILY_KINDS``
#: (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, InternVL, Idefics3, Qwen3-VL-MoE,
#: LLaVA-OneVision-1.5), PaliGemma 2 and ``tiny_more.MORE_KINDS`` (one module per family:
#: SmolVLM2...).
TINY_KINDS = LLAVA_KINDS + FAMILY_KINDS + ("paligemma2",) + MORE_KINDS

# fmt: off
TINY_WORDS = (
    "\n", "USER", "ASSISTANT", "user", "assistant", "system", ":", ".", ",", "?", "!", "'", "-",
    "what", "What", "is", "Is", "are", "Are", "the", "The", "a", "A", "an", "An", "main", "object",
    "objects", "in", "on", "of", "at", "to", "this", "This", "that", "these", "image", "picture",
    "photo", "shows", "show", "there", "There", "it", "It", "answer", "Answer", "one", "two",
    "three", "four", "word", "words", "describe", "Describe", "color", "colour", "shape", "shapes",
    "cat", "dog", "car", "tree", "house", "bird", "fish", "boat", "ball", "cup", "small", "large",
    "big", "tiny", "red", "green", "blue", "yellow", "orange", "purple", "black", "white", "gray",
    "star", "circle", "square", "triangle", "cross", "heart", "diamond", "you", "You", "helpful",
    "please", "Please", "with", "and", "or", "not", "no", "yes", "Yes", "which", "Which", "where",
    "Where", "how", "How", "many", "count", "left", "right", "top", "bottom", "center", "middle",
    "background", "foreground", "see", "can", "do", "does", "question", "single", "short",
    "sentence", "only", "kind", "type", "name", "looks", "like", "thing", "here", "have", "has",
    "be", "I", "my", "your", "its", "for", "from", "by", "as", "so", "very", "some", "all",
)
# fmt: on

IMAGE_SIZE = 16
PATCH_SIZE = 4
# (height, width) resolutions for any-resolution tiling, in multiples of IMAGE_SIZE.
GRID_PINPOINTS = [[16, 32], [32, 16], [32, 32], [16, 48], [48, 16]]

CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(
    *, words: Sequence[str] = TINY_WORDS, **kwargs: Any
) -> PreTrainedTokenizerFast:
    """The word-level tokenizer shared by all tiny checkpoints
    (:func:`lvlm_lens.hf_parts.word_level_tokenizer` over ``words``, default ``TINY_WORDS``;
    ``kwargs`` go to it)."""
    return word_level_tokenizer(words, **kwargs)


def _vision_config(kind: str, overrides: dict) -> CLIPVisionConfig | SiglipVisionConfig:
    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        attention_dropout=0.0,
    )
    common.update(overrides)
    if kind == "llava-onevision-qwen2":
        return SiglipVisionConfig(vision_use_head=False, **common)
    return CLIPVisionConfig(projection_dim=32, **common)


def _text_config(kind: str, tokenizer: PreTrainedTokenizerFast, overrides: dict[str, Any]):
    config_cls, n_kv_heads = {
        "llava-llama": (LlamaConfig, 4),
        "llava-next-mistral": (MistralConfig, 2),
        "llava-next-vicuna": (LlamaConfig, 4),
        "llava-onevision-qwen2": (Qwen2Config, 2),
    }[kind]
    kwargs = tiny_text_kwargs(
        tokenizer, num_key_value_heads=n_kv_heads, head_dim=16, tie_word_embeddings=False
    )
    if config_cls is MistralConfig:
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    return config_cls(**kwargs)


def _randomize_(model: torch.nn.Module) -> None:
    """Moves norm weights off 1, biases off 0 and re-draws ``image_newline``."""
    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, torch.nn.LayerNorm) or "RMSNorm" in type(module).__name__
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if is_norm and isinstance(weight, torch.nn.Parameter):
                weight.normal_(1.0, 0.2)
            if isinstance(bias, torch.nn.Parameter):
                bias.normal_(0.0, 0.05)
        for name, param in model.named_parameters():
            if name.endswith("image_newline"):
                param.normal_(0.0, 1.0)


def build_tiny_checkpoint(
    kind: str,
    folder: str | Path,
    *,
    seed: int = 0,
    chat_template: bool = False,
    vision: dict[str, Any] | None = None,
    lvlm: dict[str, Any] | None = None,
    processor: dict[str, Any] | None = None,
    **text_overrides: Any,
) -> Path:
    """Builds and saves a tiny random checkpoint of one supported family.

    Args:
        kind: One of ``TINY_KINDS``.
        folder: Where to save; created if missing.
        seed: Seed for the random weights (the same seed gives identical weights).
        chat_template: Whether to save a chat template with the tokenizer (llava-hf style
            ``USER: <image>\\n... ASSISTANT:`` for LLaVA/NeXT, ChatML for OneVision, the
            family's own for Qwen2-VL / Qwen2.5-VL / Gemma 3).
        vision: Fields set on the vision config (Gemma 3 also ``mm_tokens_per_image``,
            Idefics3 also ``scale_factor``).
        lvlm: Fields set on the multimodal config (LLaVA's ``vision_feature_layer``,
            ``vision_feature_select_strategy``...).
        processor: Attributes set on the image processor (Idefics3's ``do_image_splitting``).
        **text_overrides: Fields set on the text config, e.g. ``num_hidden_layers``,
            ``rope_parameters``, ``sliding_window`` or ``tie_word_embeddings`` (InternVL and
            Idefics3 also ``model_type``: the text model's type).

    Returns:
        The folder, loadable with ``from_pretrained`` and ``AutoTokenizer`` /
        ``AutoImageProcessor``. LLaVA and NeXT folders also hold an ``AutoProcessor``.
    """
    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny kind {kind!r}; expected one of {TINY_KINDS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "paligemma2":
        return build_paligemma_checkpoint(folder, seed=seed, vision=vision, **text_overrides)
    if kind in BUILDERS:
        return BUILDERS[kind](
            folder, seed=seed, chat_template=chat_template, vision=vision, lvlm=lvlm,
            processor=processor, **text_overrides,
        )
    if kind in FAMILY_KINDS:
        return build_family_checkpoint(
            kind, folder, seed=seed, chat_template=chat_template, vision=vision, lvlm=lvlm,
            processor=processor, **text_overrides,
        )
    onevision = kind == "llava-onevision-qwen2"
    template = (
        (CHATML_CHAT_TEMPLATE if onevision else LLAVA_CHAT_TEMPLATE) if chat_template else None
    )
    tokenizer = build_tiny_tokenizer(chat_template=template)
    common = dict(
        vision_config=_vision_config(kind, vision or {}),
        text_config=_text_config(kind, tokenizer, text_overrides),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(text_overrides.get("tie_word_embeddings", False)),
    )
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if kind == "llava-llama":
        config = LlavaConfig(
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
            **common,
        )
        model_cls, processor_cls = LlavaForConditionalGeneration, LlavaProcessor
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size=square
        )
    elif onevision:
        config = LlavaOnevisionConfig(
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=GRID_PINPOINTS,
            **common,
        )
        model_cls, processor_cls = LlavaOnevisionForConditionalGeneration, None
        image_processor = LlavaOnevisionImageProcessorPil(
            size=square, image_grid_pinpoints=GRID_PINPOINTS
        )
    else:
        config = LlavaNextConfig(
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            image_grid_pinpoints=GRID_PINPOINTS,
            image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
            **common,
        )
        model_cls, processor_cls = LlavaNextForConditionalGeneration, LlavaNextProcessor
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size=square,
            image_grid_pinpoints=GRID_PINPOINTS,
        )
    for key, value in (lvlm or {}).items():
        setattr(config, key, value)
    for key, value in (processor or {}).items():
        setattr(image_processor, key, value)
    config._attn_implementation = "eager"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        _randomize_(model)
    model.eval()
    model.save_pretrained(folder)
    if processor_cls is None:
        # The OneVision processor needs a torchvision video processor: save the parts instead.
        tokenizer.save_pretrained(folder)
        image_processor.save_pretrained(folder)
    else:
        processor = processor_cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=1,
            chat_template=template,
        )
        processor.save_pretrained(folder)
    return folder


def hf_num_image_tokens(model: torch.nn.Module, image_inputs: Any, index: int) -> int:
    """Counts the ``<image>`` tokens HF expects for one image, by running its vision side.

    Args:
        model: A loaded ``Llava*ForConditionalGeneration``.
        image_inputs: The image processor's output (``pixel_values``, maybe ``image_sizes``).
        index: Which image of the batch.

    Returns:
        The number of image embeddings the model splices in for that image, as the only image
        of its sample (OneVision skips any-resolution tiling for samples with several images).
    """
    kwargs = {"pixel_values": image_inputs["pixel_values"][index : index + 1]}
    if "image_sizes" in image_inputs:
        kwargs["image_sizes"] = image_inputs["image_sizes"][index : index + 1]
    with torch.no_grad():
        features = model.get_image_features(**kwargs).pooler_output
    if isinstance(features, torch.Tensor):
        features = list(features)
    return int(features[0].shape[0])
