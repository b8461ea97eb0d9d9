"""Patching and knockout sweeps at the cost of what changes.

By causality, patching an activation of layer ``l`` at positions ``P`` leaves every layer
below ``l`` unchanged, and every position before ``min(P)`` unchanged at every layer; knocking
out edges into queries from ``q0`` on in a window of layers starting at ``l`` does the same
with ``q0``. So a sweep runs the unpatched input once, keeping its keys/values and the residual
stream entering every layer, and each patched run recomputes only positions from ``min(P)`` on
and layers from ``l`` on, attending to the cached keys/values of the earlier positions. Many
patches of one layer run as rows of one batch that all continue the same cached prefix (the
attention reads it in place, never copied per row). A patch whose clean values equal the
corrupted ones (text before the image when only the image differs) changes nothing and is not
run: its value is the corrupted metric. On a model with linear-attention layers (Qwen3.5) the
cache holds their recurrent state only after the whole run, so every patched run recomputes
all positions (from its layer on): the layer skipping applies, the position skipping does not.

Single-position sweeps give what ``transformer_lens.patching.get_act_patch_resid_pre`` (and
``_resid_mid``, ``_attn_out``, ``_mlp_out``) give; knockout sweeps what
:func:`~lvlm_lens.interventions.knockout.knockout_effect` gives for each window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from lvlm_lens.interventions.knockout import (
    Group,
    group_mask,
    knockout_hooks,
    window_layers,
)
from lvlm_lens.interventions.metrics import get_metric, metric_change
from lvlm_lens.interventions.patching import check_pair
from lvlm_lens.model.cross_attention import CrossInput
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.kv_cache import KVCache
from lvlm_lens.model.layout import TokenLayout

#: Patchable per-position activations: sweep name -> hook point in ``blocks.{l}``.
ACTIVATIONS = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
Groups = dict[str, Bool[Tensor, "batch pos"]]
SweepMetric = str | Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor]


@dataclass
class SweepResult:
    """Metric of each patched run.

    Attributes:
        values: ``[layer, group]``; a single-position sweep over every position has the shape
            and the values of ``transformer_lens.patching.get_act_patch_*``.
        layers: The patched layers.
        groups: Name of each patched group of positions.
        corrupted: The metric of the unpatched corrupted run.
        skipped: Entries not run because the patch changed no value.
    """

    values: Float[Tensor, "layer group"]
    layers: list[int]
    groups: list[str]
    corrupted: float
    skipped: int = 0

    def to_frame(self) -> pd.DataFrame:
        """The values as a DataFrame, one row per layer, one column per group."""
        return pd.DataFrame(self.values.numpy(), index=self.layers, columns=self.groups)


def single_positions(inp: LVLMInput, group: str | None = None) -> Groups:
    """One patch per position (column, in every example): all of them, or those where
    ``group`` (a name from ``inp.groups``) is set in some example."""
    cols = range(inp.shape[1]) if group is None else group_mask(inp, group).any(0).nonzero()
    out = {}
    for c in [int(c) for c in cols]:
        m = torch.zeros(inp.shape, dtype=torch.bool)
        m[:, c] = True
        out[str(c)] = m
    return out


def token_groups(inp: LVLMInput, names: Sequence[str] | None = None) -> Groups:
    """One patch per named token group (default: every non-empty group but ``text``)."""
    if names is None:
        names = [n for n, g in inp.groups.items() if n != "text" and g.any(-1).all()]
    return {n: group_mask(inp, n).cpu() for n in names}


def image_rows(inp: LVLMInput) -> Groups:
    """One patch per row of image patches (per image and tile), in every example."""
    keys: dict[tuple[int, int, int], Tensor] = {}
    for i in range(len(inp)):
        pos = inp.groups["image"][i].nonzero().flatten()
        images = inp.image_coords[inp.image_slice(i)]
        which = torch.cat([torch.full((len(c),), k) for k, c in enumerate(images)])
        coords = torch.cat(images)
        for p, k, (tile, row, _) in zip(pos.tolist(), which.tolist(), coords.tolist(),
                                        strict=True):
            if tile < 0:  # an image-newline or CLS token
                continue
            mask = keys.setdefault((k, tile, row), torch.zeros(inp.shape, dtype=torch.bool))
            mask[i, p] = True
    plain = all(k == 0 and t == 0 for k, t, _ in keys)
    return {(f"row {r}" if plain else f"image {k} tile {t} row {r}"): m
            for (k, t, r), m in sorted(keys.items())}


def _record(model: HookedLVLM, inp: LVLMInput, names: list[str]):
    """One run of ``inp``: final residual stream, full KV cache and the named activations."""
    store: dict[str, Tensor] = {}

    def save(t: Tensor, hook: Any) -> None:
        store[hook.name] = t

    with model.hooks(fwd_hooks=[(n, save) for n in dict.fromkeys(names)]):
        resid, cache = model.prefill(inp)
    return resid, cache, store


def _block_start(layout: TokenLayout, p0: int, cache: KVCache) -> int:
    """``p0``, moved back to the start of a bidirectional image block it falls inside (the
    block's earlier tokens attend to its later ones, so they change too); 0 where the cache
    holds a linear-attention layer's recurrent state (Qwen3.5), which exists only after the
    whole run, so no shorter prefix of it can be reused."""
    if cache.states is not None:
        return 0
    while layout.splits_block(p0):
        p0 -= 1
    return p0


def _rows(layout: TokenLayout, n: int) -> TokenLayout:
    """The layout of each example repeated for ``n`` consecutive rows (example-major; the image
    side of cross-attention layers is read in place, only its query mask repeated)."""
    rep = lambda t, d: None if t is None else t.repeat_interleave(n, dim=d)  # noqa: E731
    deep = None if layout.deepstack is None else [rep(d, 0) for d in layout.deepstack]
    c = layout.cross
    cross = None if c is None else CrossInput(c.states, rep(c.mask, 0), rep(c.rows, 0), c.kv)
    return TokenLayout(rep(layout.position_ids, -2), rep(layout.image_blocks, 0), deep, cross)


def _prefix(cache: KVCache, p0: int) -> KVCache | None:
    """The cached keys/values of the positions before ``p0`` (views, not copies); a
    cross-attention layer's (the image side's, no sequence axis) whole."""
    if p0 == 0:
        return None
    whole = () if cache.cross is None or cache.cross.kv is None else cache.cross.kv
    keys = [k if la in whole else k[:, :, :p0] for la, k in enumerate(cache.keys)]
    values = [v if la in whole else v[:, :, :p0] for la, v in enumerate(cache.values)]
    return KVCache(keys, values, cache.attention_mask[:, :p0], cross=cache.cross)


@torch.no_grad()
def patch_sweep(
    model: HookedLVLM,
    clean: LVLMInput,
    corrupted: LVLMInput,
    metric: SweepMetric,
    activation: str = "resid_pre",
    groups: Groups | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> SweepResult:
    """Run ``corrupted`` with ``activation`` patched from ``clean`` at each (layer, group).

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        clean: Input whose activations are patched in.
        corrupted: Input that is run and patched (same shape and padding as ``clean``).
        metric: ``logits [batch, pos, d_vocab] -> scalar`` as in TransformerLens, or a name from
            :data:`~lvlm_lens.interventions.metrics.METRICS` (batch mean at the final position,
            answers from ``clean.answer_ids``; only the final position is unembedded).
        activation: One of :data:`ACTIVATIONS`.
        groups: Positions patched together, by name (:func:`single_positions`,
            :func:`token_groups`, :func:`image_rows`); default: every single position.
        layers: Layers to patch (default: all).
        batch_size: Rows (patches x examples) per forward pass.
        progress: Show a progress bar.
    """
    check_pair(clean, corrupted)
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}")
    n_layers, dev = model.cfg.n_layers, model.cfg.device
    layers = list(range(n_layers)) if layers is None else list(layers)
    groups = single_positions(corrupted) if groups is None else groups
    names, masks = list(groups), torch.stack([torch.as_tensor(g) for g in groups.values()])
    if masks.shape[1:] != corrupted.shape or masks.dtype != torch.bool:
        raise ValueError(f"groups must be bool masks of shape {tuple(corrupted.shape)}")
    empty = [n for n, m in zip(names, masks, strict=True) if not m.any()]
    if empty:
        raise ValueError(f"patch group(s) {empty} hold no position")
    acts = [f"blocks.{layer}.{ACTIVATIONS[activation]}" for layer in layers]
    resid, kv, corr = _record(model, corrupted, [f"blocks.{x}.hook_resid_pre" for x in layers]
                              + acts)
    _, _, cln = _record(model, clean, acts)
    layout = model.layout(corrupted)
    score = _scorer(model, metric, clean, model.unembed(model.ln_final(resid)))
    m_corr = score(resid[:, -1:], 0, 1)[0]
    first = masks.any(1).float().argmax(-1).tolist()  # first patched column of each group
    order = sorted(range(len(names)), key=lambda g: first[g])
    masks = masks.to(dev)
    b, per_batch = len(corrupted), max(1, batch_size // len(corrupted))
    values = torch.full((len(layers), len(names)), m_corr)
    skipped = 0
    bar = tqdm(total=len(layers) * len(names), desc=f"patch {activation}", disable=not progress)
    for li, (layer, act) in enumerate(zip(layers, acts, strict=True)):
        src, base = cln[act], corr[act]
        changes = (masks & (src != base).any(-1)).flatten(1).any(1).tolist()
        todo = [g for g in order if changes[g]]
        skipped += len(names) - len(todo)
        bar.update(len(names) - len(todo))
        for start in range(0, len(todo), per_batch):
            chunk = todo[start : start + per_batch]
            n, p0 = len(chunk), _block_start(layout, min(first[g] for g in chunk), kv)
            rows = masks[chunk][:, :, p0:].transpose(0, 1).reshape(b * n, -1, 1)  # example-major
            fill = src[:, p0:].repeat_interleave(n, 0)

            def patch(t: Tensor, hook: Any, rows: Tensor = rows, fill: Tensor = fill) -> Tensor:
                return torch.where(rows, fill.to(t.dtype), t)

            x = corr[f"blocks.{layer}.hook_resid_pre"][:, p0:].repeat_interleave(n, 0)
            mask = corrupted.attention_mask[:, p0:].repeat_interleave(n, 0)
            with model.hooks(fwd_hooks=[(act, patch)]):
                out, _ = model.run_blocks(x, mask, _prefix(kv, p0), start_at_layer=layer,
                                          layout=_rows(layout.cols(slice(p0, None)), n))
            values[li, chunk] = torch.tensor(score(out, p0, n))
            bar.update(n)
    bar.close()
    return SweepResult(values, layers, names, m_corr, skipped)


def _scorer(model: HookedLVLM, metric: SweepMetric, clean: LVLMInput, corrupted_logits: Tensor):
    """``score(resid, p0, n) -> [n]``: the metric of each of ``n`` patched runs whose rows
    (example-major) hold the residual stream of positions ``p0..``."""
    b = corrupted_logits.shape[0]
    if isinstance(metric, str):
        fn = get_metric(metric)
        if clean.answer_ids is None:
            raise ValueError(f"metric {metric!r} needs clean.answer_ids (pass answers=)")
        answers = clean.answer_ids.to(corrupted_logits.device)

        def by_name(resid: Tensor, p0: int, n: int) -> list[float]:
            logits = model.unembed(model.ln_final(resid[:, -1]))
            return fn(logits, answers.repeat_interleave(n)).view(b, n).mean(0).tolist()

        return by_name

    def full(resid: Tensor, p0: int, n: int) -> list[float]:
        logits = model.unembed(model.ln_final(resid)).view(b, n, resid.shape[1], -1)
        head = corrupted_logits[:, : corrupted_logits.shape[1] - resid.shape[1]]
        return [float(metric(torch.cat([head, logits[:, j]], dim=1))) for j in range(n)]

    return full


@torch.no_grad()
def knockout_window_sweep(
    model: HookedLVLM,
    inp: LVLMInput,
    source: Group,
    target: Group,
    window: int = 9,
    centres: Sequence[int] | None = None,
    metric: str = "prob",
    heads: Sequence[int] | None = None,
    relative: bool | None = None,
    progress: bool = True,
) -> Float[Tensor, "window batch"]:
    """:func:`~lvlm_lens.interventions.knockout.knockout_effect` in the window of ``window``
    layers centred on each of ``centres`` (default: every layer), from one shared prefix.

    The clean run is done once; each window recomputes only the positions from the first
    target query on, and only the layers from the window's first on, with the knockout hooks
    of :func:`~lvlm_lens.interventions.knockout.knockout_hooks` (cross-attention layers, Llama
    3.2 Vision, read their image side's keys / values from the shared prefix).

    Returns:
        One row per window centre, one value per example.
    """
    if inp.answer_ids is None:
        raise ValueError("knockout needs inp.answer_ids (pass answers= to model.prepare)")
    n = model.cfg.n_layers
    centres = list(range(n)) if centres is None else list(centres)
    window = min(window, n)
    layout = model.layout(inp)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n)]
    resid, kv, pre = _record(model, inp, names)
    q0 = _block_start(layout, int(group_mask(inp, target).any(0).float().argmax()), kv)
    suffix = layout.cols(slice(q0, None))
    clean = model.unembed(model.ln_final(resid[:, -1]))
    answers = inp.answer_ids.to(clean.device)
    mask = inp.attention_mask[:, q0:]
    out = []
    for centre in tqdm(centres, desc="knockout windows", disable=not progress):
        layers = window_layers(centre, window, n)
        start = min(layers)
        with model.hooks(fwd_hooks=knockout_hooks(model, inp, source, target, layers, heads)):
            x, _ = model.run_blocks(pre[names[start]][:, q0:], mask, _prefix(kv, q0),
                                    start_at_layer=start, layout=suffix)
        new = model.unembed(model.ln_final(x[:, -1]))
        out.append(metric_change(new, clean, answers, metric, relative))
    return torch.stack(out)
