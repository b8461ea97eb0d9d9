"""Head ablation: a head's keys/values at source positions replaced by a baseline.

Following Kim et al. (2025, Fig. 1A), ablating query head ``(layer, head)`` makes the
queries in scope read *baseline* keys and values at the source positions (default: the
image tokens) instead of the clean ones. Under grouped-query attention the ablation is per
query head. Here: the options, the baseline keys/values, and the reference implementation as
TransformerLens hooks (one full forward per mask). The fast engine is :mod:`~.engine`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from PIL import Image
from torch import Tensor

from lvlm_lens.model.families import FAMILIES
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.prepare import to_rgb
from lvlm_lens.progress import progress_bar, show_progress

#: Kinds of baseline keys/values (see :class:`HeadAblation`).
BASELINES = ("mean", "image", "blank", "zero")
#: Which queries read the baseline: ``text`` (after the last source token) or ``all``.
SCOPES = ("text", "all")


@dataclass
class HeadAblation:
    """Options of head ablation.

    Attributes:
        baseline: ``"blank"`` (default: a constant gray image of the same size; needs nothing
            else, so the defaults run on any input), ``"mean"`` (per-position mean of the
            head's K/V over ``reference_images``; the CLI's default, with reference images
            from the data), ``"image"`` (K/V computed from ``baseline_image``) or ``"zero"``.
            See :func:`compute_baseline` for several images and any-resolution sizes.
        scope: ``"text"`` (only queries after the last source position read the baseline; the
            prefix up to it is then identical under every mask) or ``"all"`` (every query).
        source: Token group whose keys/values are replaced (``"image"``, or e.g. ``"question"``
            to study text-only circuits).
        blank_value: Gray level of the ``"blank"`` image.
    """

    baseline: Literal["mean", "image", "blank", "zero"] = "blank"
    scope: Literal["text", "all"] = "text"
    source: str = "image"
    blank_value: int = 128

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; use one of {BASELINES}")
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; use one of {SCOPES}")


@dataclass
class BaselineKV:
    """Baseline post-RoPE keys and values per layer, aligned with an input's columns.

    Attributes:
        keys: Per layer ``[batch, kv_head, pos, d_head]``; only ``source`` columns are read.
        values: Per layer, likewise.
        source: Source positions (whose K/V an ablated head replaces).

    On a cross-attention layer (Llama 3.2 Vision) both hold the image side's keys / values
    ``[batch, kv_head, image_pos, d_head]``, every one of them a source: an ablated
    cross-attention head reads the baseline image's side instead of the clean one.

    On a linear-attention layer (Qwen3.5) both hold the layer's input (the output of ``ln1``)
    ``[batch, 1, pos, d_model]``: an ablated linear-attention head computes everything it takes
    from the source positions (its conv inputs, keys, values, write strengths and decays) from
    the baseline's input there (see ``docs/concepts/head-ablation.md``).
    """

    keys: list[Float[Tensor, "batch kv_head pos d_head"]]
    values: list[Float[Tensor, "batch kv_head pos d_head"]]
    source: Bool[Tensor, "batch pos"]


def source_mask(inp: LVLMInput, source: str | Tensor) -> Bool[Tensor, "batch pos"]:
    """The source positions of a batch; every example must have at least one."""
    if isinstance(source, str):
        if source not in inp.groups:
            raise ValueError(f"unknown source group {source!r}; known: {sorted(inp.groups)}")
        source = inp.groups[source]
    if source.shape != inp.shape or source.dtype != torch.bool:
        raise ValueError(f"source mask must be bool {tuple(inp.shape)}, got {source.shape}")
    empty = (~source.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"the source group is empty in example(s) {empty}: nothing to ablate")
    return source


def query_scope(inp: LVLMInput, source: Tensor, scope: str) -> Bool[Tensor, "batch pos"]:
    """Queries that read the baseline: after the last source position (``text``) or all."""
    real = inp.attention_mask.bool().to(source.device)
    if scope == "all":
        return real
    cols = torch.arange(source.shape[1], device=source.device)
    last = (source * cols).max(-1, keepdim=True).values
    return real & (cols > last)


def _linear_layers(model: HookedLVLM) -> tuple[int, ...]:
    """The linear-attention layers (Qwen3.5), after checking a head mask can name their heads."""
    lin = model.cfg.decoder.linear_attention
    if lin is None:
        return ()
    if lin.n_v_heads != model.cfg.n_heads:
        raise ValueError(f"head masks have n_heads={model.cfg.n_heads} per layer but the "
                         f"linear-attention layers {lin.n_v_heads} heads: head ablation on this "
                         "checkpoint is not supported yet")
    return lin.layers


def _cross_layers(model: HookedLVLM) -> tuple[int, ...]:
    """The gated cross-attention layers (Llama 3.2 Vision)."""
    cross = model.cfg.decoder.cross_attention
    return () if cross is None else cross.layers


def _kv_hook(i: int, k: str, linear: tuple[int, ...], cross: tuple[int, ...]) -> str:
    if i in linear:
        return f"blocks.{i}.ln1.hook_normalized"
    if i in cross:
        return f"blocks.{i}.cross_attn.hook_{k[-1]}"
    return f"blocks.{i}.attn.hook_{k}"


def kv_of(model: HookedLVLM, inp: LVLMInput) -> tuple[list[Tensor], list[Tensor]]:
    """Clean post-RoPE keys and values of every layer, ``[batch, kv_head, pos, d_head]`` (a
    linear-attention layer: its input, ``[batch, 1, pos, d_model]``, as keys and values; a
    cross-attention layer: the image side's, ``[batch, kv_head, image_pos, d_head]``)."""
    linear, cross = _linear_layers(model), _cross_layers(model)
    n = model.cfg.n_layers
    names = [_kv_hook(i, k, linear, cross) for i in range(n) for k in ("rot_k", "v")]
    with torch.no_grad():
        _, cache = model.run_with_cache(inp, names_filter=names, return_cache_object=False)
    keys, values = [], []
    for i in range(n):
        if i in linear:
            x = cache[f"blocks.{i}.ln1.hook_normalized"][:, None]
            keys.append(x)
            values.append(x)
        else:
            keys.append(cache[_kv_hook(i, "rot_k", linear, cross)].transpose(1, 2))
            values.append(cache[_kv_hook(i, "v", linear, cross)].transpose(1, 2))
    return keys, values


def with_images(model: HookedLVLM, inp: LVLMInput, images: list[list[Any]]) -> LVLMInput:
    """The same prompts with other images (a list per example); token ids must not change."""
    other = model.prepare(images, inp.texts, template="raw")
    if other.shape != inp.shape or not torch.equal(other.input_ids, inp.input_ids):
        raise ValueError("the baseline images give a different image-token layout than the "
                         "example's images: give one baseline image per image of the example")
    return other


def stand_ins(model: HookedLVLM, inp: LVLMInput, images: Any) -> list[list[Image.Image]]:
    """Baseline images laid out like ``inp``'s images, one per image of every example.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        inp: The batch whose images they stand in for.
        images: One image for every image of the batch, or one entry per example: an image for
            all of that example's images, or a list with one image per image.

    Returns:
        Per example, the list of its stand-in images. On any-resolution families (LLaVA-NeXT,
        OneVision) each is resized to the size of the image it replaces, so that the
        image-token layout is the example's; LLaVA(-1.5) processes every image at one size,
        and its stand-ins are left as they are.
    """
    n = inp.images_per_example
    if not isinstance(images, list | tuple):
        images = [images] * len(n)
    if len(images) != len(n):
        raise ValueError(f"got {len(images)} baseline image entries for {len(n)} examples: give "
                         "one image, or one entry per example (an image or a list of images)")
    out = []
    for i, (entry, k) in enumerate(zip(images, n, strict=True)):
        entry = list(entry) if isinstance(entry, list | tuple) else [entry] * k
        if len(entry) != k:
            raise ValueError(f"example {i} holds {k} image(s) but {len(entry)} baseline "
                             "image(s) were given for it")
        out.append([to_rgb(im) for im in entry])
    if not resizes_stand_ins(model):
        return out
    sizes = iter(inp.image_sizes.tolist())
    return [[_resize(im, next(sizes)) for im in ims] for ims in out]


def resizes_stand_ins(model: HookedLVLM) -> bool:
    """Whether baseline images are resized to the images they replace (any- and native-
    resolution families, whose image-token layout depends on the image size: LLaVA-NeXT,
    OneVision, Qwen2-VL...), so baselines depend on image sizes."""
    return FAMILIES[model.cfg.lvlm_type].size_dependent_layout


def _resize(image: Image.Image, size: list[int]) -> Image.Image:
    h, w = size
    return image if image.size == (w, h) else image.resize((w, h), Image.BICUBIC)


def compute_baseline(
    model: HookedLVLM,
    inp: LVLMInput,
    config: HeadAblation,
    *,
    baseline_image: Any = None,
    reference_images: Sequence[Any] | None = None,
    progress: bool = True,
) -> BaselineKV:
    """Baseline keys/values for ``inp`` under ``config``.

    Every image of an example is replaced (several images per example, and examples with
    different numbers of images, are fine): by ``baseline_image``, by a gray image of its own
    size (``blank``), or by each reference image in turn (``mean``: the K/V of the runs with
    reference ``r`` in every image slot, averaged over ``r``). On any-resolution families the
    stand-in images are resized to the size of the image they replace (see :func:`stand_ins`),
    so ``mean`` works on data whose images differ in size.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        inp: The batch to ablate.
        config: The ablation options.
        baseline_image: For ``baseline="image"``: one image, or one entry per example (an image
            or a list with one image per image of the example).
        reference_images: For ``baseline="mean"``: images whose K/V are averaged per position.
        progress: Show a progress bar over the reference images.
    """
    source = source_mask(inp, config.source)
    if config.baseline == "zero":
        keys, values = kv_of(model, inp)
        return BaselineKV([torch.zeros_like(k) for k in keys],
                          [torch.zeros_like(v) for v in values], source)
    if config.source != "image" and config.baseline != "mean":
        raise ValueError(f"baseline {config.baseline!r} replaces the image; with source "
                         f"{config.source!r} use baseline='zero' or 'mean'")
    if config.baseline == "image":
        if baseline_image is None:
            raise ValueError("baseline='image' needs baseline_image=")
        runs = [stand_ins(model, inp, baseline_image)]
    elif config.baseline == "blank":
        gray = iter([Image.new("RGB", (w, h), (config.blank_value,) * 3)
                     for h, w in inp.image_sizes.tolist()])
        runs = [[[next(gray) for _ in range(k)] for k in inp.images_per_example]]
    else:
        if not reference_images:
            raise ValueError("baseline='mean' needs reference_images= (a list of images)")
        runs = [stand_ins(model, inp, im) for im in reference_images]
    keys = values = None
    with show_progress(progress):
        for images in progress_bar(runs, desc="baseline K/V", show=len(runs) > 1):
            k, v = kv_of(model, with_images(model, inp, images))
            keys = k if keys is None else [a + b for a, b in zip(keys, k, strict=True)]
            values = v if values is None else [a + b for a, b in zip(values, v, strict=True)]
    return BaselineKV([k / len(runs) for k in keys], [v / len(runs) for v in values], source)


def check_heads(model: HookedLVLM, heads: Tensor, batch: int | None = None) -> Tensor:
    """Validate an ablation mask ``[n_layers, n_heads]`` or ``[batch, n_layers, n_heads]``."""
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    if tuple(heads.shape[-2:]) != shape or heads.ndim not in (2, 3):
        raise ValueError(f"head mask must be [n_layers, n_heads] = {list(shape)} (optionally "
                         f"with a leading batch dim), got {list(heads.shape)}")
    if heads.ndim == 3 and batch is not None and heads.shape[0] != batch:
        raise ValueError(f"head mask has {heads.shape[0]} rows for a batch of {batch}")
    return heads


def head_ablation_hooks(
    model: HookedLVLM,
    inp: LVLMInput,
    heads: Bool[Tensor, "... n_layers n_heads"] | Float[Tensor, "... n_layers n_heads"],
    baseline: BaselineKV,
    scope: str = "text",
    queries: Bool[Tensor, "batch pos"] | None = None,
) -> list[tuple[str, Any]]:
    """Hooks that ablate ``heads`` (``True``/1 = ablated) in a full-sequence run of ``inp``.

    This is the reference implementation. A float ``heads`` interpolates: the selected scores
    and values move by that fraction towards the baseline, so its gradient at 0 is the
    attribution-patching estimate of each head's ablation effect. ``queries`` (a bool mask of
    query positions) replaces ``scope`` to make only those queries read the baseline, e.g. the
    final token in path patching.
    """
    heads = check_heads(model, heads, len(inp))
    b = len(inp)
    weight = heads.to(model.cfg.dtype).expand(b, *heads.shape[-2:]).to(model.cfg.device)
    qs = query_scope(inp, baseline.source, scope) if queries is None else (
        queries.bool().to(baseline.source.device) & inp.attention_mask.bool().to(
            baseline.source.device))
    qs = qs.to(model.cfg.device)
    src = baseline.source.to(model.cfg.device)
    linear, cross = _linear_layers(model), _cross_layers(model)
    hooks = []
    for layer in range(model.cfg.n_layers):
        w = weight[:, layer]
        if not heads.requires_grad and not bool((w != 0).any()):
            continue
        if layer in linear:
            hooks += linear_ablation_hooks(model, inp, layer, w, baseline, qs, src)
            continue
        store: dict[str, Tensor] = {}
        is_cross = layer in cross  # its keys: the whole image side, all of it the source
        attn = model.blocks[layer].cross_attn if is_cross else model.blocks[layer].attn
        g = model.cfg.n_heads // getattr(attn, "n_kv", model.cfg.n_key_value_heads)  # Gemma 4
        kb = baseline.keys[layer].repeat_interleave(g, dim=1)
        vb = baseline.values[layer]
        scale = attn.scaling
        src_l = torch.ones_like(kb[:, 0, :, 0], dtype=torch.bool) if is_cross else src

        def save(t: Tensor, hook: Any, key: str, store: dict = store) -> None:
            store[key] = t

        def scores_hook(s: Tensor, hook: Any, store=store, kb=kb, w=w, scale=scale,
                        attn=attn, src=src_l) -> Tensor:  # baseline scores capped as the hook's
            sb = attn.softcap(torch.einsum("bqhd,bhkd->bhqk", store["q"], kb) * scale)
            cond = qs[:, None, :, None] & src[:, None, None, :] & (s > torch.finfo(s.dtype).min / 2)
            store["cond"] = cond
            return torch.where(cond, s + w[:, :, None, None] * (sb.to(s.dtype) - s), s)

        def z_hook(z: Tensor, hook: Any, store=store, vb=vb, w=w, g=g) -> Tensor:
            dv = (vb - store["v"].transpose(1, 2)).repeat_interleave(g, dim=1)
            p = store["pattern"] * store["cond"] * w[:, :, None, None]
            dz = torch.einsum("bhqk,bhkd->bqhd", p, dv.to(p.dtype))
            if "gate" in store:  # output-gated attention (Qwen3.5): hook_z is gated
                dz = dz * torch.sigmoid(store["gate"])
            return z + dz

        pre = f"blocks.{layer}.{'cross_attn' if is_cross else 'attn'}."
        hooks += [
            (pre + ("hook_q" if is_cross else "hook_rot_q"),
             lambda t, hook, s=save: s(t, hook, "q")),
            (pre + "hook_v", lambda t, hook, s=save: s(t, hook, "v")),
            (pre + "hook_attn_scores", scores_hook),
            (pre + "hook_pattern", lambda t, hook, s=save: s(t, hook, "pattern")),
            (pre + "hook_z", z_hook),
        ]
        if model.cfg.decoder.attn_output_gate:
            hooks.insert(-1, (pre + "hook_gate", lambda t, hook, s=save: s(t, hook, "gate")))
    return hooks


def linear_ablation_hooks(
    model: HookedLVLM, inp: LVLMInput, layer: int, w: Tensor, baseline: BaselineKV, qs: Tensor,
    src: Tensor,
) -> list[tuple[str, Any]]:
    """Reference hooks ablating the weighted heads ``w`` ``[batch, head]`` of a linear-attention
    layer: the layer is run again on its input with the source positions' input the
    baseline's, and the in-scope queries of each ablated head read that run's state (moved by
    ``w`` towards it)."""
    attn, store = model.blocks[layer].attn, {}
    xb = baseline.keys[layer][:, 0]
    real = inp.attention_mask.bool().to(model.cfg.device)

    def save(x: Tensor, hook: Any) -> None:
        store["x"] = x

    def read_hook(read: Tensor, hook: Any) -> Tensor:
        x = store["x"]
        alt = attn.reads(torch.where(src[..., None], xb.to(x.dtype), x), real)
        cond = qs[:, :, None, None] * w[:, None, :, None]
        return read + cond.to(read.dtype) * (alt - read)

    pre = f"blocks.{layer}."
    return [(pre + "ln1.hook_normalized", save), (pre + "attn.hook_read", read_hook)]


@contextmanager
def ablate_heads(model: HookedLVLM, inp: LVLMInput, heads: Tensor, baseline: BaselineKV,
                 scope: str = "text") -> Iterator[Any]:
    """Context manager: inside it, runs of ``inp`` have ``heads`` ablated."""
    with model.hooks(fwd_hooks=head_ablation_hooks(model, inp, heads, baseline, scope)) as m:
        yield m
