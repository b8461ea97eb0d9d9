"""Image-token ablation: replace chosen projected image tokens by a baseline embedding.

Following Neo et al. ("Towards interpreting visual information processing in VLMs", ICLR'25):
the projected image embeddings (``hook_image_embeds``, ``[batch, pos, d_model]``, each at its
image position) of chosen tokens, e.g. object patches, are overwritten with the dataset-mean
image token or with another image's embedding at the same image-token index. On DeepStack
families (Qwen3-VL) the image also enters early decoder layers (``blocks.{l}.hook_deepstack``);
there the DeepStack features at the ablated positions are replaced by the baseline's own
(another image's at the same index, or the mean feature of each DeepStack layer over the same
reference tokens), so an ablated token carries nothing of its image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.progress import progress_bar, show_progress

Which = str | Bool[Tensor, "..."] | Int[Tensor, " n"] | Sequence[int]
HOOK_NAME = "hook_image_embeds"


@dataclass
class ImageBaseline:
    """What ablated image tokens get instead of their image.

    Attributes:
        embeds: For ``hook_image_embeds``: a ``[d_model]`` token (every ablated token), or
            ``[n, d_model]`` rows taken at the same image-token index (``n`` is the batch's
            image-token count or, tiled over every image, one image's token count).
        deepstack: DeepStack families (Qwen3-VL): per DeepStack layer, rows shaped like
            ``embeds`` for ``blocks.{l}.hook_deepstack``; ``None`` for other families.
    """

    embeds: Float[Tensor, " d_model"] | Float[Tensor, "n d_model"]
    deepstack: list[Float[Tensor, "*n d_model"]] | None = None


Baseline = Float[Tensor, " d_model"] | Float[Tensor, "n d_model"] | LVLMInput | ImageBaseline


@torch.no_grad()
def mean_image_baseline(
    model: HookedLVLM, inputs: LVLMInput | Sequence[LVLMInput], progress: bool = True
) -> ImageBaseline:
    """The mean projected image token over every image token of ``inputs`` (fp32 sums) and,
    on DeepStack families, the mean DeepStack feature of each layer over the same tokens."""
    inputs = [inputs] if isinstance(inputs, LVLMInput) else list(inputs)
    sums: list[Tensor] | None = None
    count = 0
    with show_progress(progress):
        for inp in progress_bar(inputs, desc="mean image token", show=len(inputs) > 1):
            if not inp.has_images:
                continue
            embeds, deep = model.image_features(inp)
            parts = [torch.cat(embeds)] + [torch.cat(d) for d in deep or []]
            new = [p.float().sum(0) for p in parts]
            sums = new if sums is None else [a + b for a, b in zip(sums, new, strict=True)]
            count += parts[0].shape[0]
    if not count:
        raise ValueError("these inputs hold no image tokens")
    means = [(t / count).to(model.cfg.dtype) for t in sums]
    return ImageBaseline(means[0], means[1:] if model.cfg.decoder.deepstack else None)


def mean_image_token(
    model: HookedLVLM, inputs: LVLMInput | Sequence[LVLMInput], progress: bool = True
) -> Float[Tensor, " d_model"]:
    """The mean projected image token over every image token of ``inputs`` (fp32 sum). On
    DeepStack families ablate with :func:`mean_image_baseline`, which also holds the mean
    DeepStack features."""
    return mean_image_baseline(model, inputs, progress).embeds


def image_token_mask(inp: LVLMInput, which: Which) -> Bool[Tensor, " n_image_tokens"]:
    """Which image tokens of the batch to ablate, as a flat mask over the batch's image tokens
    in order of appearance (row-major over batch then position).

    Args:
        inp: The batch.
        which: One of: a flat bool mask ``[n_image_tokens_in_batch]``; a bool token-group
            mask ``[batch, pos]`` (true only at image tokens); a token-group name (e.g.
            ``"image"``); or sequence positions (int tensor / list), applied to every example.
    """
    image = inp.groups["image"].bool()
    n = int(image.sum())
    if isinstance(which, str):
        if which not in inp.groups:
            raise KeyError(f"unknown token group {which!r}; known: {sorted(inp.groups)}")
        which = inp.groups[which].bool()
    which = torch.as_tensor(which, device=image.device)
    if which.dtype != torch.bool:
        pos = which.long().flatten()
        if ((pos < 0) | (pos >= image.shape[1])).any():
            raise ValueError(f"positions {pos.tolist()} out of range for {image.shape[1]} tokens")
        which = torch.zeros_like(image)
        which[:, pos] = True
    if which.shape == (n,):
        return which
    if which.shape != image.shape:
        raise ValueError(
            f"expected a bool mask of shape ({n},) over image tokens or {tuple(image.shape)} "
            f"over the batch, got {tuple(which.shape)}"
        )
    if (which & ~image).any():
        raise ValueError("the tokens to ablate include non-image tokens")
    return which[image]


def _image_token_counts(inp: LVLMInput) -> list[int]:
    if inp.image_coords:
        return [c.shape[0] for c in inp.image_coords]
    return [e.shape[0] for e in inp.image_embeds or []]


def image_baseline(model: HookedLVLM, baseline: Baseline) -> ImageBaseline:
    """``baseline`` as an :class:`ImageBaseline`: an ``LVLMInput`` gives its image embeddings
    (and DeepStack features); a tensor is the embeddings alone, refused on DeepStack families,
    where it would leave the ablated tokens' DeepStack features (their image) in place."""
    if isinstance(baseline, LVLMInput):
        embeds, deep = model.image_features(baseline)
        baseline = ImageBaseline(torch.cat(embeds),
                                 None if deep is None else [torch.cat(d) for d in deep])
    elif not isinstance(baseline, ImageBaseline):
        baseline = ImageBaseline(baseline)
    if model.cfg.decoder.deepstack and baseline.deepstack is None:
        raise ValueError("a tensor baseline holds no DeepStack features, and Qwen3-VL adds the "
                         "image's there too: pass mean_image_baseline(...), an LVLMInput or an "
                         "ImageBaseline with deepstack=")
    if not model.cfg.decoder.deepstack and baseline.deepstack is not None:
        raise ValueError("the baseline holds DeepStack features but this model has none")
    for layer, d in enumerate(baseline.deepstack or []):
        if d.shape != baseline.embeds.shape:
            raise ValueError(f"baseline DeepStack layer {layer} has shape {tuple(d.shape)}, "
                             f"its embeddings {tuple(baseline.embeds.shape)}")
    return baseline


def baseline_embeds(
    model: HookedLVLM, inp: LVLMInput, baseline: Baseline | Tensor
) -> Float[Tensor, "n_image_tokens d_model"] | Float[Tensor, " d_model"]:
    """Replacement rows for the image embeddings: a ``[d_model]`` vector (broadcast to every
    ablated token) or one row per image token of the batch, in order of appearance.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        inp: The batch being ablated.
        baseline: A ``[d_model]`` token (e.g. :func:`mean_image_token`); an ``LVLMInput`` or a
            ``[n, d_model]`` tensor of other image embeddings, taken at the same image-token
            index: ``n`` is either the batch's image-token count or, tiled over every image,
            the token count of one image. An :class:`ImageBaseline` gives its ``embeds``.
    """
    if isinstance(baseline, LVLMInput):
        baseline = torch.cat(model.image_embeddings(baseline))
    elif isinstance(baseline, ImageBaseline):
        baseline = baseline.embeds
    baseline = baseline.to(model.cfg.device, model.cfg.dtype)
    n = int(inp.groups["image"].sum())
    if baseline.ndim == 1 or baseline.shape[0] == n:
        return baseline
    counts = _image_token_counts(inp)
    if counts and all(c == baseline.shape[0] for c in counts):
        return baseline.repeat(len(counts), 1)
    raise ValueError(
        f"baseline has {baseline.shape[0]} image tokens; the batch has {n} (per image: {counts})"
    )


def token_ablation_hooks(
    model: HookedLVLM, inp: LVLMInput, which: Which, baseline: Baseline
) -> list[tuple[str, Callable[..., Tensor]]]:
    """A ``hook_image_embeds`` hook that overwrites the chosen image tokens by ``baseline``
    and, on DeepStack families, ``blocks.{l}.hook_deepstack`` hooks that overwrite their
    DeepStack features by the baseline's.

    See :func:`image_token_mask` for ``which`` and :func:`image_baseline` for ``baseline``.
    """
    mask = image_token_mask(inp, which).to(model.cfg.device)
    base = image_baseline(model, baseline)
    rows = baseline_embeds(model, inp, base.embeds)
    is_image = (inp.input_ids == model.cfg.image_token_id).to(model.cfg.device)
    ablated = torch.zeros_like(is_image).masked_scatter(is_image, mask)

    def replace(new: Tensor, old: Float[Tensor, "batch pos d_model"], what: str) -> Tensor:
        if old.shape[:2] != ablated.shape:
            raise ValueError(f"ablation built for a {tuple(ablated.shape)} batch got {what} "
                             f"of {tuple(old.shape[:2])}")
        new = new.to(old.dtype)
        if new.ndim == 2:  # one row per image token of the batch: place them at their positions
            new = torch.zeros_like(old).masked_scatter(is_image[..., None], new)
        return torch.where(ablated[..., None], new, old)

    hooks = [(HOOK_NAME, lambda t, hook: replace(rows, t, "image embeddings"))]
    if base.deepstack is None:
        return hooks
    deep = [baseline_embeds(model, inp, d) for d in base.deepstack]

    def deep_hook(feats: Float[Tensor, "batch pos d_model"], hook: Any, layer: int) -> Tensor:
        if layer >= len(deep):
            raise ValueError(f"the baseline has {len(deep)} DeepStack layers; the model adds "
                             f"DeepStack features after layer {layer} too")
        return replace(deep[layer], feats, "DeepStack features")

    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.hook_deepstack",
                      lambda t, hook, layer=layer: deep_hook(t, hook, layer)))
    return hooks


def ablate_image_tokens(
    model: HookedLVLM, inp: LVLMInput, which: Which, baseline: Baseline
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of ``inp`` with the chosen image tokens replaced by ``baseline``.

    Example:
        >>> mean = mean_image_baseline(model, dataset)
        >>> logits = ablate_image_tokens(model, inp, object_mask, mean)
    """
    return model.run_with_hooks(inp, fwd_hooks=token_ablation_hooks(model, inp, which, baseline))
