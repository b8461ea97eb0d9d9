"""Activation patching with images: thin wrappers over ``transformer_lens.patching``.

Each sweep runs the *corrupted* input once per patched entry, with one activation of the clean
run patched in, and reports a metric of the patched logits. Clean and corrupted inputs are
:class:`~lvlm_lens.LVLMInput` pairs that may differ in the image, in the text or both, but must
have the same shape (same token count, image tokens included). TransformerLens' sweeps take
the ``LVLMInput`` in place of tokens: it has ``.shape`` and ``HookedLVLM.forward`` accepts it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import patching as tl_patching

from lvlm_lens.interventions.metrics import get_metric
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput

PatchMetric = Callable[[Tensor], Tensor] | str
_SWEEPS = {
    "hook_resid_pre": tl_patching.get_act_patch_resid_pre,
    "attn.hook_z": tl_patching.get_act_patch_attn_head_out_all_pos,
    "hook_mlp_out": tl_patching.get_act_patch_mlp_out,
}


def check_pair(clean: LVLMInput, corrupted: LVLMInput) -> None:
    """Raise a clear error unless ``clean`` and ``corrupted`` can be patched into each other."""
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean and corrupted inputs must have the same shape (batch, tokens), got "
            f"{tuple(clean.shape)} and {tuple(corrupted.shape)}: use images with the same "
            "image-token count and prompts of the same token length"
        )
    if not torch.equal(clean.attention_mask.bool(), corrupted.attention_mask.bool()):
        raise ValueError("clean and corrupted inputs must have the same padding")


def patch_metric(metric: PatchMetric, clean: LVLMInput) -> Callable[[Tensor], Tensor]:
    """A scalar metric of logits: a callable as is, or a name from
    :data:`~lvlm_lens.interventions.metrics.METRICS`, averaged over the batch at the final
    position with ``clean.answer_ids`` as the answers."""
    if callable(metric):
        return metric
    fn = get_metric(metric)
    if clean.answer_ids is None:
        raise ValueError(f"metric {metric!r} needs clean.answer_ids (pass answers= to prepare)")
    answers = clean.answer_ids

    def scalar(logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        return fn(logits[:, -1], answers.to(logits.device)).mean()

    return scalar


@torch.no_grad()
def _sweep(
    model: HookedLVLM,
    clean: LVLMInput,
    corrupted: LVLMInput,
    metric: PatchMetric,
    hook_suffix: str,
    normalize: bool,
) -> Tensor:
    check_pair(clean, corrupted)
    fn = patch_metric(metric, clean)
    clean_logits, cache = model.run_with_cache(
        clean, names_filter=lambda name: name.endswith(hook_suffix), return_cache_object=False
    )
    if normalize:
        m_clean = torch.as_tensor(fn(clean_logits))
        m_corrupted = torch.as_tensor(fn(model(corrupted)))
        if torch.isclose(m_clean, m_corrupted, rtol=0, atol=1e-12):
            raise ValueError(
                "clean and corrupted metrics are equal: cannot normalise (use normalize=False)"
            )
    if hook_suffix.startswith("attn."):  # TL reads blocks.{l}.attn.hook_*, cross layers too
        point = hook_suffix.removeprefix("attn.hook_")
        for layer in range(model.cfg.n_layers):
            cache[f"blocks.{layer}.{hook_suffix}"] = cache[model.attn_hook_name(layer, point)]
    out = _SWEEPS[hook_suffix](model, corrupted, cache, fn)
    return (out - m_corrupted) / (m_clean - m_corrupted) if normalize else out


def patch_resid(
    model: HookedLVLM, clean: LVLMInput, corrupted: LVLMInput, metric: PatchMetric,
    normalize: bool = True,
) -> Float[Tensor, "layer pos"]:
    """Patch the residual stream (``blocks.{l}.hook_resid_pre``) at each layer and position.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        clean: Input whose activations are patched in.
        corrupted: Input that is run and patched.
        metric: ``logits -> scalar``, or a metric name (batch mean at the final position).
        normalize: Return ``(patched - corrupted) / (clean - corrupted)`` (1 = fully
            restored) instead of the raw patched metric.
    """
    return _sweep(model, clean, corrupted, metric, "hook_resid_pre", normalize)


def patch_attn_heads(
    model: HookedLVLM, clean: LVLMInput, corrupted: LVLMInput, metric: PatchMetric,
    normalize: bool = True,
) -> Float[Tensor, "layer head"]:
    """Patch each head's output (``blocks.{l}.attn.hook_z``; ``cross_attn.hook_z`` on a
    cross-attention layer) at all positions; see :func:`patch_resid`."""
    return _sweep(model, clean, corrupted, metric, "attn.hook_z", normalize)


def patch_mlp_out(
    model: HookedLVLM, clean: LVLMInput, corrupted: LVLMInput, metric: PatchMetric,
    normalize: bool = True,
) -> Float[Tensor, "layer pos"]:
    """Patch each MLP's output (``blocks.{l}.hook_mlp_out``) per layer and position; see
    :func:`patch_resid`."""
    return _sweep(model, clean, corrupted, metric, "hook_mlp_out", normalize)
