"""Image-token ablation: replace chosen projected image tokens by a baseline embedding.

Following Neo et al. ("Towards interpreting visual information processing in VLMs", ICLR'25):
the projected image embeddings (``hook_image_embeds``, flat ``[n_image_tokens_in_batch,
d_model]`` in order of appearance, row-major over batch then position) of chosen tokens, e.g.
object patches, are overwritten with the dataset-mean image token or with another image's
embedding at the same image-token index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.progress import progress_bar, show_progress

Which = str | Bool[Tensor, "..."] | Int[Tensor, " n"] | Sequence[int]
Baseline = Float[Tensor, " d_model"] | Float[Tensor, "n d_model"] | LVLMInput
HOOK_NAME = "hook_image_embeds"


@torch.no_grad()
def mean_image_token(
    model: Any, inputs: LVLMInput | Sequence[LVLMInput], progress: bool = True
) -> Float[Tensor, " d_model"]:
    """The mean projected image token over every image token of ``inputs`` (fp32 sum)."""
    inputs = [inputs] if isinstance(inputs, LVLMInput) else list(inputs)
    total, count = None, 0
    with show_progress(progress):
        for inp in progress_bar(inputs, desc="mean image token", show=len(inputs) > 1):
            if not inp.has_images:
                continue
            flat = torch.cat(model.image_embeddings(inp)).float()
            total = flat.sum(0) if total is None else total + flat.sum(0)
            count += flat.shape[0]
    if not count:
        raise ValueError("these inputs hold no image tokens")
    return (total / count).to(model.cfg.dtype)


def image_token_mask(inp: LVLMInput, which: Which) -> Bool[Tensor, " n_image_tokens"]:
    """Which image tokens of the batch to ablate, as a flat mask in ``hook_image_embeds`` order.

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


def baseline_embeds(
    model: Any, inp: LVLMInput, baseline: Baseline
) -> Float[Tensor, "n_image_tokens d_model"] | Float[Tensor, " d_model"]:
    """Replacement rows for ``hook_image_embeds``: a ``[d_model]`` vector (broadcast to every
    ablated token) or one row per image token of the batch.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        inp: The batch being ablated.
        baseline: A ``[d_model]`` token (e.g. :func:`mean_image_token`); an ``LVLMInput`` or a
            ``[n, d_model]`` tensor of other image embeddings, taken at the same image-token
            index: ``n`` is either the batch's image-token count or, tiled over every image,
            the token count of one image.
    """
    if isinstance(baseline, LVLMInput):
        baseline = torch.cat(model.image_embeddings(baseline))
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
    model: Any, inp: LVLMInput, which: Which, baseline: Baseline
) -> list[tuple[str, Callable[..., Tensor]]]:
    """A ``hook_image_embeds`` hook that overwrites the chosen image tokens by ``baseline``.

    See :func:`image_token_mask` for ``which`` and :func:`baseline_embeds` for ``baseline``.
    """
    mask = image_token_mask(inp, which).to(model.cfg.device)
    rows = baseline_embeds(model, inp, baseline)

    def hook(embeds: Float[Tensor, "n_image_tokens d_model"], hook: Any) -> Tensor:
        if embeds.shape[0] != mask.shape[0]:
            raise ValueError(
                f"ablation built for {mask.shape[0]} image tokens got {embeds.shape[0]}"
            )
        new = rows.to(embeds.dtype).expand_as(embeds)
        return torch.where(mask[:, None], new, embeds)

    return [(HOOK_NAME, hook)]


def ablate_image_tokens(
    model: Any, inp: LVLMInput, which: Which, baseline: Baseline
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of ``inp`` with the chosen image tokens replaced by ``baseline``.

    Example:
        >>> mean = mean_image_token(model, dataset)
        >>> logits = ablate_image_tokens(model, inp, object_mask, mean)
    """
    return model.run_with_hooks(inp, fwd_hooks=token_ablation_hooks(model, inp, which, baseline))
