"""Shared pieces of the benchmark scripts.

- :func:`time_interleaved` times several callables side by side: warm-up rounds, then
  ``repeats`` rounds that call every function once, and returns each function's median.
  Timing them interleaved in one process means drift of the machine (thermal state, other
  load) hits all of them alike. The order rotates each round, or with ``shuffle=True`` is drawn
  afresh each round (seeded). Rotation keeps the cyclic order, so each function always follows
  the same other one; shuffle when a call leaves the allocator or the caches in a state that
  the next call pays for (``run_with_cache`` freeing ~800 MB does).
- :func:`paired_ratio`: the median over rounds of the ratio of two functions *within* a round,
  which survives a burst of machine slowness that hits a few rounds (shared cloud VMs have such
  bursts) better than the ratio of the medians.
- :func:`build_random_llava` builds a random ``LlavaForConditionalGeneration`` (CLIP vision
  tower + Llama decoder) in memory, with eager attention and the word-level tokenizer and
  CLIP image processor of :mod:`lvlm_lens.testing.tiny`.
- :func:`build_random_family` does the same for Qwen2-VL / 2.5-VL / 3-VL and Gemma 3 (their own
  vision towers, their decoders at the same sizes), with the configs of
  :mod:`lvlm_lens.testing.tiny_families`.
- :func:`llava15_prompt` and :func:`random_images` make LLaVA-1.5-shaped inputs for it.
- :func:`keep_freed_memory` stops glibc from handing freed memory back to the kernel.
- :func:`boot_tl_bridge` saves a random LLaVA-1.5 model with its processor and boots
  TransformerLens' own ``TransformerBridge`` on it (never installing anything).
- :func:`machine_info` describes where a benchmark ran; :class:`OtherLoad` measures how much
  CPU other processes took meanwhile (on a shared machine that is what makes timings noisy).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import LlavaForConditionalGeneration
from transformers.models.clip import CLIPImageProcessorPil

from lvlm_lens.hf_parts import clip_llama_config
from lvlm_lens.testing.tiny import build_tiny_tokenizer
from lvlm_lens.testing.tiny_families import (
    family_config,
    family_image_processor,
    family_tokenizer,
)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    samples: dict[str, list[float]] | None = None,
    shuffle: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median wall-clock seconds of each function, timed in interleaved rounds.

    Args:
        fns: Name -> zero-argument callable. Return values are dropped before the next call,
            and ``gc.collect()`` runs (untimed) before each call.
        repeats: Timed rounds; each round calls every function once.
        warmup: Untimed rounds run first.
        samples: If given, filled with name -> the seconds of each timed round, in round order.
        shuffle: Call the functions in a random order each round instead of rotating it.
        clock: Wall-clock by default; ``time.process_time`` counts only this process's CPU
            seconds (user + kernel), which other jobs on a shared machine disturb far less when
            torch runs one thread (see :func:`clock_of`).

    Returns:
        Name -> median seconds, in the order of ``fns``.
    """
    names = list(fns)
    samples = {} if samples is None else samples
    samples.update({name: [] for name in names})
    rng = random.Random(0)
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        order = rng.sample(names, len(names)) if shuffle else names[shift:] + names[:shift]
        for name in order:
            gc.collect()
            start = clock()
            out = fns[name]()
            elapsed = clock() - start
            del out
            if round_ >= warmup:
                samples[name].append(elapsed)
    return {name: statistics.median(samples[name]) for name in names}


def model_arguments(parser: Any) -> None:
    """The random model's shape flags shared by the scripts: ``--layers --d-model --heads
    --d-mlp`` (defaults: 8 x 1024, 16 heads, d_mlp 2.75 x d_model)."""
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--d-mlp", type=int, default=None, help="default: 2.75 x d_model")


def clock_of(name: str) -> Callable[[], float]:
    """``"wall"``: ``time.perf_counter``; ``"cpu"``: ``time.process_time`` (this process's CPU
    seconds: with one torch thread, what a call costs without the time it waited for a core)."""
    return {"wall": time.perf_counter, "cpu": time.process_time}[name]


def paired_ratio(samples: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``samples[name][r] / samples[base][r]``."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[base], strict=True))


def build_random_llava(
    *,
    n_layers: int = 8,
    d_model: int = 1024,
    n_heads: int = 16,
    d_mlp: int = 2816,
    vocab_size: int | None = None,
    vision_layers: int = 2,
    vision_d_model: int = 256,
    image_size: int = 336,
    patch_size: int = 14,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[LlavaForConditionalGeneration, Any, CLIPImageProcessorPil]:
    """A random LLaVA-1.5-shaped model (fp32, eval, eager attention) with its tokenizer and
    image processor.

    The vision tower is a CLIP ViT of ``vision_layers`` x ``vision_d_model`` giving
    ``(image_size / patch_size)^2`` image tokens (576 by default, as LLaVA-1.5); the decoder is
    a Llama. ``vocab_size`` defaults to the tokenizer's; a larger one (LLaVA-1.5: 32064) only
    widens the unembedding, as the ids past the tokenizer's are never used. The weights are
    drawn directly on ``device`` in ``dtype`` (a 7B model never passes through CPU fp32).
    """
    tokenizer = build_tiny_tokenizer()
    config = clip_llama_config(
        tokenizer,
        image_size=image_size,
        patch_size=patch_size,
        vision_d_model=vision_d_model,
        vision_d_mlp=4 * vision_d_model,
        vision_layers=vision_layers,
        vision_heads=max(1, vision_d_model // 64),
        vision_feature_layer=-2,
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model.eval(), tokenizer, image_processor


def build_random_family(
    kind: str,
    *,
    n_layers: int = 8,
    d_model: int = 1024,
    n_heads: int = 16,
    d_mlp: int = 2816,
    vision_layers: int = 2,
    vision_d_model: int = 256,
    seed: int = 0,
) -> tuple[Any, Any, Any, int]:
    """A random ``kind`` model (``qwen2-vl``, ``qwen2.5-vl``, ``qwen3-vl``, ``gemma3``,
    ``internvl``, ``idefics3``, ``qwen3-vl-moe``, ``llava-onevision-1.5``, ``qwen3.5``,
    ``qwen3.5-moe``) with the
    decoder sizes of :func:`build_random_llava`, its tokenizer and image processor, and the
    image side in pixels that gives LLaVA-1.5-like token counts (GLM-4.1V / 4.5V:
    :func:`build_random_glm4v`).

    Qwen2: patch 14, 2x2 merge, GQA with 4 K/V heads, q/k/v biases; a 672-px image gives 576
    tokens. Qwen3-VL: patch 16 (768 px: 576 tokens), q/k norms, DeepStack from both vision
    layers. Gemma 3: SigLIP at 448 px / patch 14 pooled to 256 tokens (as the real 896 px /
    patch 14 / 256), 8 K/V heads, head_dim ``d_model / n_heads``, 5 sliding-window (512) : 1
    global layers. Idefics3: SmolVLM's 512-px tiles of 16-px patches pixel-shuffled by 4 (64
    tokens a tile); a 1536-px image is cut into 3x3 tiles + the global image (640 tokens), 4 K/V
    heads, tied embeddings. Qwen3-VL-MoE: Qwen3-VL's with every MLP sparse (128 experts of width
    ``3 d_model / 8``, 8 per token, as Qwen3-VL-30B-A3B). LLaVA-OneVision-1.5: patch 14 (672 px:
    576 tokens), a Qwen3 decoder with 4 K/V heads and 1-D positions. Qwen3.5: Qwen3-VL's image
    side (768 px: 576 tokens, no DeepStack), 3 Gated-DeltaNet layers : 1 output-gated full one
    (4 K/V heads, partial rotary 1/4), ``n_heads`` value heads of ``d_head`` per linear layer
    sharing ``n_heads / 2`` key heads, conv kernel 4 (MoE: 128 experts of ``d_model / 4``, 8 per
    token, a shared expert of ``d_model / 4``).
    """
    if kind.startswith("glm4v"):
        return build_random_glm4v(kind, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                                  d_mlp=d_mlp, vision_layers=vision_layers,
                                  vision_d_model=vision_d_model, seed=seed)  # fmt: skip
    if kind == "llama4":
        return _random_llama4(n_layers, d_model, n_heads, d_mlp, vision_layers, vision_d_model,
                              seed)  # fmt: skip
    if kind == "mllama":
        return _random_mllama(n_layers, d_model, n_heads, d_mlp, vision_layers, vision_d_model,
                              seed)  # fmt: skip
    if kind == "mistral3":
        return _random_mistral3(n_layers, d_model, n_heads, d_mlp, vision_layers, vision_d_model,
                                seed)  # fmt: skip
    tokenizer = family_tokenizer(kind, chat_template=False)
    d_head = d_model // n_heads
    text: dict[str, Any] = dict(
        hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, max_position_embeddings=4096, initializer_range=0.02,
        head_dim=d_head,
    )  # fmt: skip
    patch = 16 if kind.startswith(("qwen3-vl", "qwen3.5")) else 14
    vision: dict[str, Any] = dict(patch_size=patch)
    if kind in ("internvl", "idefics3"):  # InternVL: one 448-px tile of 32x32 patches -> 256
        image_size = 448 if kind == "internvl" else 512
        text.update(num_key_value_heads=4)
        vision.update(
            hidden_size=vision_d_model, intermediate_size=4 * vision_d_model,
            num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_d_model // 64),
            image_size=image_size,
        )  # fmt: skip
    elif kind == "gemma3":
        image_size = 448
        text.update(
            num_key_value_heads=n_heads // 2, query_pre_attn_scalar=d_head, sliding_window=512,
            layer_types=["full_attention" if i % 6 == 5 else "sliding_attention"
                         for i in range(n_layers)],
        )  # fmt: skip
        vision.update(
            hidden_size=vision_d_model, intermediate_size=4 * vision_d_model,
            num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_d_model // 64),
            image_size=image_size, mm_tokens_per_image=256,
        )  # fmt: skip
    elif kind.startswith("qwen3.5"):  # 768 px at patch 16 merged 2x2 -> 576, as Qwen3-VL
        image_size = 48 * patch
        text.update(
            num_key_value_heads=4, layer_types=["full_attention" if i % 4 == 3 else
                                                "linear_attention" for i in range(n_layers)],
            linear_num_key_heads=n_heads // 2, linear_num_value_heads=n_heads,
            linear_key_head_dim=d_head, linear_value_head_dim=d_head, linear_conv_kernel_dim=4,
            rope_parameters={"rope_type": "default", "rope_theta": 1e7, "mrope_interleaved": True,
                             "partial_rotary_factor": 0.25, "mrope_section": [3, 3, 2]},
        )  # fmt: skip
        vision.update(depth=vision_layers, hidden_size=vision_d_model, num_heads=4,
                      intermediate_size=4 * vision_d_model, num_position_embeddings=2304)
        if kind == "qwen3.5-moe":  # Qwen3.5-35B-A3B's ratios: 256 experts of d_model / 4, top 8
            text.update(num_experts=128, num_experts_per_tok=8,
                        moe_intermediate_size=d_model // 4,
                        shared_expert_intermediate_size=d_model // 4)
    elif kind == "llava-onevision-1.5":  # a 672-px image: 48x48 patches merged 2x2 -> 576
        image_size = 48 * patch
        text.update(num_key_value_heads=4)
        vision.update(depth=vision_layers, hidden_size=vision_d_model, num_heads=4,
                      intermediate_size=4 * vision_d_model)
    else:
        image_size = 48 * patch
        q = d_head // 2
        text.update(num_key_value_heads=4, rope_parameters={
            "rope_type": "default", "rope_theta": 1e6, "mrope_section": [q // 4, 3 * q // 8,
                                                                          q - q // 4 - 3 * q // 8]})
        heads = max(1, vision_d_model // 64)
        if kind == "qwen2-vl":
            vision.update(depth=vision_layers, embed_dim=vision_d_model, num_heads=heads)
        elif kind.startswith("qwen3-vl"):
            vision.update(depth=vision_layers, hidden_size=vision_d_model, num_heads=heads,
                          intermediate_size=4 * vision_d_model, num_position_embeddings=2304,
                          deepstack_visual_indexes=list(range(vision_layers)))
        else:
            vision.update(depth=vision_layers, hidden_size=vision_d_model, num_heads=heads,
                          intermediate_size=4 * vision_d_model, window_size=112)
    if kind == "idefics3":
        vision.update(patch_size=16, scale_factor=4)
    if kind == "qwen3-vl-moe":  # Qwen3-VL-30B-A3B's ratios: 128 experts of d_model * 3/8, top 8
        text.update(num_experts=128, num_experts_per_tok=8, moe_intermediate_size=3 * d_model // 8)
    config, cls = family_config(kind, tokenizer, text, vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    processor = family_image_processor(kind, patch, image_size)
    return model.eval(), tokenizer, processor, 3 * image_size if kind == "idefics3" else image_size


def build_random_glm4v(
    kind: str, *, n_layers: int, d_model: int, n_heads: int, d_mlp: int, vision_layers: int,
    vision_d_model: int, seed: int = 0,
) -> tuple[Any, Any, Any, int]:
    """A random GLM-4.1V (``glm4v``) or GLM-4.5V (``glm4v-moe``: every layer after the first
    sparse, 128 experts of ``3 d_model / 8``, 8 per token, one shared expert) at the decoder
    sizes of :func:`build_random_family`: 4 K/V heads, q/k/v biases, partial 3-D RoPE over half
    of ``d_head``; GLM's vision tower at patch 14, so a 672-px image gives 576 tokens."""
    from lvlm_lens.testing.tiny_glm4v import (
        glm4v_config,
        glm4v_image_processor,
        glm4v_tokenizer,
    )

    tokenizer = glm4v_tokenizer(chat_template=False)
    q = d_model // n_heads // 4  # rotated frequencies: half of d_head, two dimensions each
    text: dict[str, Any] = dict(
        hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=4, max_position_embeddings=4096,
        initializer_range=0.02,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5,
                         "mrope_section": [q // 4, 3 * q // 8, q - q // 4 - 3 * q // 8]},
    )  # fmt: skip
    moe = kind == "glm4v-moe"
    if moe:
        text.update(n_routed_experts=128, num_experts_per_tok=8, n_group=1, topk_group=1,
                    moe_intermediate_size=3 * d_model // 8, routed_scaling_factor=1.0)
    vision = dict(depth=vision_layers, hidden_size=vision_d_model, intermediate_size=4 *
                  vision_d_model, num_heads=max(1, vision_d_model // 64), patch_size=14,
                  image_size=336)  # fmt: skip
    config = glm4v_config(tokenizer, text, vision, moe)
    cls = getattr(transformers, "Glm4vMoeForConditionalGeneration" if moe
                  else "Glm4vForConditionalGeneration")  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval(), tokenizer, glm4v_image_processor(14, 576), 48 * 14


def _random_llama4(n_layers: int, d_model: int, n_heads: int, d_mlp: int, vision_layers: int,
                   vision_d_model: int, seed: int) -> tuple[Any, Any, Any, int]:  # fmt: skip
    """Llama 4 at the benchmark's decoder sizes, shaped as Scout / Maverick: 16 experts of width
    ``d_mlp``, one per token, plus a shared expert, on every other layer (dense MLPs of width
    ``2 d_mlp`` between), a NoPE layer every fourth, chunked attention (8192) elsewhere, 4 K/V
    heads; 336-px tiles of 14-px patches pixel-shuffled by 0.5 (144 tokens a tile); a 672-px
    image is cut into 2x2 tiles + the global one (720 tokens)."""
    from lvlm_lens.model.families.llama4 import Llama4ImageProcessor
    from lvlm_lens.testing.tiny_llama4 import llama4_config, llama4_tokenizer

    tokenizer = llama4_tokenizer(chat_template=False)
    text = dict(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                head_dim=d_model // n_heads, num_key_value_heads=4, intermediate_size=d_mlp,
                intermediate_size_mlp=2 * d_mlp, num_local_experts=16, num_experts_per_tok=1,
                moe_layers=list(range(1, n_layers, 2)), attention_chunk_size=8192,
                no_rope_layers=[int((i + 1) % 4 != 0) for i in range(n_layers)],
                max_position_embeddings=16384, initializer_range=0.02)  # fmt: skip
    vision = dict(hidden_size=vision_d_model, intermediate_size=4 * vision_d_model,
                  num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_d_model // 64),
                  image_size=336, patch_size=14, projector_input_dim=4 * vision_d_model,
                  projector_output_dim=4 * vision_d_model, vision_output_dim=4 * vision_d_model)
    config = llama4_config(tokenizer, text, vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.Llama4ForConditionalGeneration(config)
    processor = Llama4ImageProcessor(size={"height": 336, "width": 336}, max_patches=16)
    return model.eval(), tokenizer, processor, 672


def _random_mllama(n_layers: int, d_model: int, n_heads: int, d_mlp: int, vision_layers: int,
                   vision_d_model: int, seed: int) -> tuple[Any, Any, Any, int]:  # fmt: skip
    """Llama 3.2 Vision at the benchmark's decoder sizes, shaped as the 11B: a gated
    cross-attention layer every fifth from layer 3, 4 K/V heads; 336-px tiles of 14-px patches
    (577 states a tile with its CLS), up to 4 tiles; a 672-px image is cut into 2x2 tiles (an
    image side of 2308 states, one ``<|image|>`` token in the sequence); gates drawn off 0."""
    from transformers.models.mllama import MllamaImageProcessorPil

    from lvlm_lens.testing.tiny_mllama import GATES, mllama_config, mllama_processor

    proc = mllama_processor()
    text = dict(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                head_dim=d_model // n_heads, num_key_value_heads=4, intermediate_size=d_mlp,
                cross_attention_layers=list(range(3, n_layers, 5)),
                max_position_embeddings=4096, initializer_range=0.02)  # fmt: skip
    vision = dict(hidden_size=vision_d_model, intermediate_size=4 * vision_d_model,
                  num_hidden_layers=vision_layers, num_global_layers=1,
                  attention_heads=max(1, vision_d_model // 64), image_size=336, patch_size=14,
                  max_num_tiles=4, intermediate_layers_indices=[0],
                  vision_output_dim=2 * vision_d_model)  # fmt: skip
    config = mllama_config(proc.tokenizer, text, vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.MllamaForConditionalGeneration(config)
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] in GATES:
                param.data.normal_(0.0, 1.0)
    image_processor = MllamaImageProcessorPil(size={"height": 336, "width": 336},
                                              max_image_tiles=4)  # fmt: skip
    return model.eval(), proc.tokenizer, image_processor, 672


def _random_mistral3(n_layers: int, d_model: int, n_heads: int, d_mlp: int, vision_layers: int,
                     vision_d_model: int, seed: int) -> tuple[Any, Any, Any, int]:  # fmt: skip
    """Mistral 3 at the benchmark's decoder sizes, shaped as Mistral Small 3.1: Pixtral at patch
    14 with 2-D RoPE and a 2x2 patch merger, a Mistral decoder with 4 K/V heads; a 672-px image
    gives 24 rows of 24 ``[IMG]`` tokens (576), each row closed by ``[IMG_BREAK]`` /
    ``[IMG_END]``."""
    from transformers.models.pixtral import PixtralImageProcessorPil

    from lvlm_lens.testing.tiny_mistral3 import mistral3_config, mistral3_tokenizer

    tokenizer = mistral3_tokenizer(chat_template=False)
    text = dict(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                head_dim=d_model // n_heads, num_key_value_heads=4, intermediate_size=d_mlp,
                max_position_embeddings=4096, initializer_range=0.02)  # fmt: skip
    heads = max(1, vision_d_model // 64)
    vision = dict(hidden_size=vision_d_model, intermediate_size=4 * vision_d_model,
                  num_hidden_layers=vision_layers, num_attention_heads=heads,
                  head_dim=vision_d_model // heads, image_size=672, patch_size=14)  # fmt: skip
    config = mistral3_config(tokenizer, text, vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.Mistral3ForConditionalGeneration(config)
    processor = PixtralImageProcessorPil(size={"longest_edge": 672},
                                         patch_size={"height": 14, "width": 14})  # fmt: skip
    return model.eval(), tokenizer, processor, 672


def llava15_prompt() -> str:
    """A raw LLaVA-1.5-style prompt: 5 tokens before ``<image>`` and 26 after (tiny tokenizer)."""
    return (
        "Please answer USER: <image>\nDescribe the main object in this image with a single "
        "short sentence. What color is it? Answer with one word. ASSISTANT:"
    )


def random_images(n: int, size: int = 336, seed: int = 0) -> list[Image.Image]:
    """``n`` random-noise RGB images of ``size`` x ``size``."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def keep_freed_memory() -> bool:
    """Make glibc serve every allocation from its heap and keep freed memory for reuse.

    By default glibc maps large allocations afresh (``mmap``) and gives freed memory back to
    the kernel, so each large temporary is page-faulted and zeroed again on its next use: a cost
    that grows with how much a call keeps alive (``run_with_cache``). The same as setting
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or preloading jemalloc. Returns
    whether it took effect (``False`` off glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def boot_tl_bridge(hf_model: Any, tokenizer: Any, image_processor: Any, folder: str) -> Any:
    """TransformerLens' ``TransformerBridge`` booted from ``hf_model`` saved in ``folder``.

    Only a LLaVA-1.5 (``llava``) model: booting a OneVision one makes TransformerLens
    pip-install torchvision, so that is refused, and its installer is switched off anyway.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.transformers import helpers
    from transformers import LlavaProcessor

    if hf_model.config.model_type != "llava":
        raise ValueError(f"boot the bridge on LLaVA-1.5 only, not {hf_model.config.model_type}")
    helpers._ensure_torchvision = lambda: False  # never pip-install torchvision
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=hf_model.config.vision_config.patch_size,
        vision_feature_select_strategy=hf_model.config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
    )
    hf_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return TransformerBridge.boot_transformers(folder, device="cpu", dtype=torch.float32).eval()


def machine_info() -> str:
    """One line: CPU model, cores, torch / transformers versions and torch threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu} ({platform.machine()}), {os.cpu_count()} cores, {platform.system()}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}), transformers {transformers.__version__}"
    )


class OtherLoad:
    """Context manager: the share of all CPUs that *other* processes used while it was open.

    Reads the machine-wide busy time from ``/proc/stat`` (Linux) and subtracts this process's
    own CPU time (VM steal time counts as others'); ``share`` is ``None`` without ``/proc/stat``.
    """

    share: float | None = None

    @staticmethod
    def _busy_seconds() -> float:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")

    def _now(self) -> tuple[float, float, float]:
        return self._busy_seconds(), sum(os.times()[:2]), time.perf_counter()

    def __enter__(self) -> OtherLoad:
        try:
            self._start = self._now()
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is not None:
            busy, own, wall = (b - a for a, b in zip(self._start, self._now(), strict=True))
            self.share = max(0.0, busy - own) / (wall * (os.cpu_count() or 1))
