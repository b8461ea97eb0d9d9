"""Loading HF LLaVA-family checkpoints into a HookedLVLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvlm_lens.model.config import LVLMConfig
from lvlm_lens.model.families import (
    FAMILIES,
    WINDOW_ON_EVERY_LAYER,
    check_supported,
    decoder_spec,
    language_model,
)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """Parse a dtype name; fp16 on CPU is refused (HF's fp16 CPU kernels are slow and lossy)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError(
            "float16 on CPU is not supported: use dtype='bfloat16' or 'float32' on "
            "CPU, or load on a GPU (device='cuda') for float16"
        )
    return dtype


def _d_head(hf_model: nn.Module) -> int:
    """The head width of the first self-attention layer (Qwen3.5: layer 0 may be linear); a
    one-line error for a decoder with none."""
    attn = [la.self_attn for la in language_model(hf_model).layers if hasattr(la, "self_attn")]
    if not attn:
        raise ValueError(
            "a decoder without any self-attention layer (text_config.layer_types all linear) is "
            "not supported: keep at least one full_attention layer"
        )
    return attn[0].head_dim


def _kv_heads(tc: Any, n_heads: int) -> int:
    """``num_key_value_heads`` of the text config; where it differs per layer (Gemma 4's
    global layers), layer 0's (the spec's ``kv_heads`` holds each layer's)."""
    try:
        return getattr(tc, "num_key_value_heads", None) or n_heads
    except Exception as err:  # transformers' AmbiguousGlobalPerLayerAttributeError
        if "per-layer attribute" not in str(err):
            raise
        return tc.per_layer_config[0].num_key_value_heads


def _sliding_windows(tc: Any) -> tuple[int | None, ...]:
    n = tc.num_hidden_layers
    window = getattr(tc, "sliding_window", None)
    if tc.model_type in WINDOW_ON_EVERY_LAYER:
        return (window,) * n
    layer_types = getattr(tc, "layer_types", None)
    if layer_types is not None:
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    return (None,) * n


def _pad_token_id(config: Any) -> int:
    """The checkpoint's pad id: the config's own, else its text config's (Idefics3's top-level
    ``pad_token_id`` is a deprecated property with a default that is not its tokenizer's)."""
    own = isinstance(getattr(type(config), "pad_token_id", None), property)
    top = None if own else getattr(config, "pad_token_id", None)
    return top or getattr(config.text_config, "pad_token_id", None) or 0


def config_from_hf(hf_model: nn.Module, name: str = "") -> LVLMConfig:
    """Read an :class:`LVLMConfig` off an HF model of a supported family."""
    config = hf_model.config
    check_supported(config)
    tc = config.text_config
    n_heads, n_layers = tc.num_attention_heads, tc.num_hidden_layers
    param = next(hf_model.parameters())
    return LVLMConfig(
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=_d_head(hf_model),
        d_model=tc.hidden_size,
        d_mlp=getattr(tc, "intermediate_size", None) or tc.moe_intermediate_size,  # all-MoE
        d_vocab=hf_model.get_output_embeddings().out_features,
        n_key_value_heads=_kv_heads(tc, n_heads),
        eps=tc.rms_norm_eps,
        act_fn=getattr(tc, "hidden_act", None) or tc.hidden_activation,
        sliding_windows=_sliding_windows(tc),
        layer_types=tuple(getattr(tc, "layer_types", None) or ["full_attention"] * n_layers),
        decoder=decoder_spec(hf_model),
        n_ctx=getattr(tc, "max_position_embeddings", 4096),
        model_name=name or getattr(config, "_name_or_path", ""),
        lvlm_type=config.model_type,
        text_model_type=tc.model_type,
        image_token_id=config.image_token_id,
        pad_token_id=_pad_token_id(config),
        device=param.device,
        dtype=param.dtype,
        original_architecture=type(hf_model).__name__,
    )


def _model_class(model_type: str) -> type:
    import transformers

    return getattr(transformers, FAMILIES[model_type].hf_class)


def read_chat_template(name_or_path: str, tokenizer: Any) -> str | None:
    """The checkpoint's chat template: the tokenizer's, else a processor's saved template file."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    folder = Path(name_or_path)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return None


#: Files of a checkpoint folder: any one of each group is enough.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
#: HF transformers 5 saves the image processor inside processor_config.json; older versions
#: wrote preprocessor_config.json.
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _looks_like_path(name: str) -> bool:
    """A name that can only be a folder, never a hub id (``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def check_folder(folder: Path) -> None:
    """Refuse a checkpoint folder that lacks weights, a tokenizer or an image processor,
    naming the files looked for."""
    groups = {"weights": WEIGHT_FILES, "tokenizer": TOKENIZER_FILES,
              "image processor": IMAGE_PROCESSOR_FILES}  # fmt: skip
    for what, names in groups.items():
        if not any((folder / n).is_file() for n in names):
            raise ValueError(
                f"model folder {folder} has no {what} file (looked for {' / '.join(names)}); "
                "save the whole checkpoint there (model.save_pretrained and "
                "processor.save_pretrained)"
            )
    if not (folder / "preprocessor_config.json").is_file():
        config = json.loads((folder / "processor_config.json").read_text())
        if "image_processor" not in config:
            raise ValueError(
                f"model folder {folder} has no image processor: processor_config.json holds "
                "no 'image_processor' entry and there is no preprocessor_config.json; save it "
                "with processor.save_pretrained"
            )


def load_pretrained(
    cls: type, name_or_path: str | Path, *, device: Any = None, dtype: Any = None, **hf_kwargs: Any
) -> Any:
    """Implementation of ``HookedLVLM.from_pretrained``."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    name_or_path = str(name_or_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(dtype, device)
    local = Path(name_or_path).is_dir()
    if local and not (Path(name_or_path) / "config.json").is_file():
        raise ValueError(f"model folder {name_or_path} has no config.json: is it a checkpoint?")
    if not local and _looks_like_path(name_or_path):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    kw = {"local_files_only": True} if local else {}
    try:
        config = AutoConfig.from_pretrained(name_or_path, **kw)
    except OSError as err:  # a hub id that cannot be fetched (offline, typo, gated)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{name_or_path} is not a model folder and could not be loaded from the Hugging "
            f"Face hub ({first})"
        ) from err
    check_supported(config)
    if local:
        check_folder(Path(name_or_path))
    hf_kwargs.setdefault("attn_implementation", "eager")
    hf_model = _model_class(config.model_type).from_pretrained(
        name_or_path, dtype=dtype, **kw, **hf_kwargs
    )
    hf_model = hf_model.to(device).eval()
    what = "tokenizer"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kw)
        what = "image processor"
        own = FAMILIES[config.model_type].load_image_processor  # Llama 4: no torchvision
        image_processor = (own(name_or_path) if own is not None
                           else AutoImageProcessor.from_pretrained(name_or_path, **kw))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"{name_or_path}: its {what} does not load ({' '.join(str(err).split())[:200]}): "
            "save the processor next to the weights (processor.save_pretrained), or load the "
            "HF model yourself and call HookedLVLM.from_hf(model, tokenizer=..., "
            "image_processor=...)"
        ) from err
    return cls(
        config_from_hf(hf_model, name_or_path),
        hf_model,
        tokenizer,
        image_processor,
        read_chat_template(name_or_path, tokenizer),
    )


def wrap_hf(
    cls: type,
    hf_model: nn.Module,
    processor: Any = None,
    *,
    tokenizer: Any = None,
    image_processor: Any = None,
    chat_template: str | None = None,
) -> Any:
    """Implementation of ``HookedLVLM.from_hf``."""
    if processor is not None:
        tokenizer = tokenizer or processor.tokenizer
        image_processor = image_processor or processor.image_processor
        chat_template = chat_template or getattr(processor, "chat_template", None)
    if tokenizer is None or image_processor is None:
        raise ValueError("from_hf needs a processor, or both tokenizer= and image_processor=")
    chat_template = chat_template or getattr(tokenizer, "chat_template", None)
    cfg = config_from_hf(hf_model, getattr(hf_model.config, "_name_or_path", ""))
    if cfg.device.type == "cpu" and cfg.dtype == torch.float16:
        resolve_dtype(torch.float16, cfg.device)  # raises the fp16-on-CPU error
    return cls(cfg, hf_model.eval(), tokenizer, image_processor, chat_template)
