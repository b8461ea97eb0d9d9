"""Attention knockout: cut every attention edge from a source token group to a target group.

Following Geva et al. ("Dissecting recall of factual associations") and Zhang et al.
("Cross-modal information flow in multimodal LLMs", CVPR'25): in the chosen layers (and heads),
queries in the *target* group may not attend to keys in the *source* group. The hook adds the
knocked-out edges to the additive causal/padding(/sliding-window) mask that
``blocks.{l}.attn.hook_attn_scores`` already holds: scores of edges the mask allows are set to
the dtype minimum, and edges the mask already blocks are left as they are (a knockout never
unblocks a masked key). The result equals a Hugging Face run given the equivalent 4D mask
(``finfo.min`` at masked or knocked-out edges).

A query that would be left with no key at all (every key it may see is a source key, e.g. BOS
under ``text -> text``, or a query whose sliding window holds only image tokens) is refused
with an error when the hooks are built: a softmax over no key has no meaning, and an additive
mask would make such a query attend uniformly to every column, future tokens and padding
included, breaking causality. Remove such queries from the target group. Left-padding queries
(which have no key to begin with) are ignored.

The hooks run on the full input or on any prefix of it, with or without a KV cache of an
earlier prefix (``run_prefix`` then a suffix run, both inside the knockout).

In a gated cross-attention layer (Llama 3.2 Vision) the keys are the image side, not the
sequence: an image's ``<|image|>`` token stands for its whole image side, so a source group
holding it cuts the target queries' edges to every image-side state of that image (a source
without image tokens cuts nothing there). A target query left with no image key reads nothing:
its cross-attention output is zero in the knocked-out heads (not refused: the layer adds to
the residual stream, and without an image HF skips it likewise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lvlm_lens.interventions.metrics import Metric, get_metric, relative_prob_change
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.masks import allowed_keys, image_blocks, prefix_blocks

Group = str | Bool[Tensor, "batch pos"]
Hook = tuple[str, Callable[..., Tensor]]


def window_layers(center: int, size: int, n_layers: int) -> list[int]:
    """Layers of a window of ``size`` layers centred on ``center``, clipped to the model.

    Zhang et al. use ``size=9``: layers ``center - 4 .. center + 4``. An even size puts the
    extra layer before the centre.
    """
    if not 0 <= center < n_layers:
        raise ValueError(f"window centre {center} out of range for {n_layers} layers")
    if size < 1:
        raise ValueError(f"window size must be positive, got {size}")
    start = center - size // 2
    return [layer for layer in range(start, start + size) if 0 <= layer < n_layers]


def group_mask(inp: LVLMInput, group: Group) -> Bool[Tensor, "batch pos"]:
    """A token group as a bool mask: a name from ``inp.groups`` or a ``[batch, pos]`` mask.

    Named groups must be non-empty in every example; explicit masks may be empty.
    """
    if isinstance(group, str):
        if group not in inp.groups:
            raise KeyError(f"unknown token group {group!r}; known: {sorted(inp.groups)}")
        mask = inp.groups[group].bool()
        empty = (~mask.any(-1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"token group {group!r} is empty in example(s) {empty}")
        return mask
    mask = torch.as_tensor(group)
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(inp.shape):
        raise ValueError(
            f"a token group mask must be bool of shape {tuple(inp.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    return mask


def _check_layers(layers: int | Sequence[int], n_layers: int) -> list[int]:
    layers = [layers] if isinstance(layers, int) else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: the model has {n_layers} layers")
    return sorted(set(layers))


def _check_keys_left(
    model: HookedLVLM, inp: LVLMInput, block: Bool[Tensor, "batch head_or_1 pos pos"],
    layers: list[int],
) -> None:
    """Refuse a knockout that leaves a real query with no key to attend to in some layer."""
    mask = inp.attention_mask.to(block.device)
    blocks = None  # Gemma 3: the tokens of one image also see its later tokens
    if model.cfg.decoder.bidirectional_image:
        blocks = image_blocks(inp.input_ids.to(block.device) == model.cfg.image_token_id)
    prefix = model.cfg.decoder.bidirectional_prefix  # PaliGemma: the prompt sees itself
    if prefix:
        blocks = prefix_blocks(mask)
    kind = lambda layer: (model.cfg.sliding_windows[layer], model.cfg.decoder.chunk(layer))  # noqa: E731
    for window, chunk in {kind(layer) for layer in layers}:  # Llama 4: chunked layers
        allowed = allowed_keys(mask, mask.shape[1], window, blocks, not prefix, chunk)[:, None]
        lost = (allowed.any(-1) & ~(allowed & ~block).any(-1)).any(1)  # [batch, q]
        if not bool(lost.any()):
            continue
        examples = lost.any(1).nonzero().flatten().tolist()
        hit = lambda g, lost=lost: bool((g.to(lost.device) & lost).any())  # noqa: E731
        groups = [n for n, g in inp.groups.items() if n != "text" and hit(g)]
        at = [layer for layer in layers if kind(layer) == (window, chunk)]
        first = lost[examples[0]].nonzero().flatten().tolist()
        raise ValueError(
            f"this knockout leaves query position(s) {first} of example(s) {examples} (token "
            f"group(s) {groups}) with no key left to attend to in layer(s) {at}: every key they "
            "may see is a source key; remove them from the target group"
        )


def knockout_hooks(
    model: HookedLVLM,
    inp: LVLMInput,
    source: Group,
    target: Group,
    layers: int | Sequence[int],
    heads: Sequence[int] | None = None,
) -> list[Hook]:
    """Forward hooks that block attention from ``target`` queries to ``source`` keys.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        inp: The input the hooks will run on (or a prefix of it, with or without a KV cache).
        source: Key group: a name from ``inp.groups`` or a bool mask ``[batch, pos]``.
        target: Query group, likewise.
        layers: Layer(s) to knock out in, e.g. from :func:`window_layers`.
        heads: Query heads to knock out in (default: all).

    Returns:
        ``(hook_name, fn)`` pairs for ``model.run_with_hooks(inp, fwd_hooks=...)``.

    Raises:
        ValueError: If a real query would be left with no key to attend to (see the module
            docstring), naming the examples, positions and layers.
    """
    cfg = model.cfg
    layers = _check_layers(layers, cfg.n_layers)
    src, tgt = group_mask(inp, source), group_mask(inp, target)
    edges = (tgt[:, :, None] & src[:, None, :]).to(cfg.device)  # [batch, q, k]
    if heads is None:
        block = edges[:, None]
    else:
        bad = [h for h in heads if not 0 <= h < cfg.n_heads]
        if bad:
            raise ValueError(f"head(s) {bad} out of range: the model has {cfg.n_heads} heads")
        on = torch.zeros(cfg.n_heads, dtype=torch.bool, device=cfg.device)
        on[list(heads)] = True
        block = edges[:, None] & on[None, :, None, None]

    linear = cfg.decoder.linear_attention
    linear = () if linear is None else linear.layers
    cross = cfg.decoder.cross_attention
    cross = () if cross is None else cross.layers
    _check_keys_left(model, inp, block, [la for la in layers if la not in (*linear, *cross)])

    def hook(scores: Float[Tensor, "batch head q k"], hook: Any) -> Tensor:
        b, _, q, k = scores.shape
        if b != block.shape[0] or k > block.shape[-1] or q > k:
            raise ValueError(
                f"knockout built for input {tuple(inp.shape)} got scores {tuple(scores.shape)}:"
                " run it on the same input (or a prefix of it, with or without a KV cache)"
            )
        floor = torch.finfo(scores.dtype).min
        m = block[..., k - q : k, :k].to(scores.device) & (scores > floor / 2)
        return scores.masked_fill(m, floor)

    hooks = []
    for layer in layers:
        if layer in linear:
            hooks += _linear_knockout_hooks(model, inp, layer, src, tgt, heads)
        elif layer in cross:
            hooks += _cross_knockout_hooks(model, inp, layer, src, tgt, heads)
        else:
            hooks.append((f"blocks.{layer}.attn.hook_attn_scores", hook))
    return hooks


def _linear_knockout_hooks(
    model: HookedLVLM, inp: LVLMInput, layer: int, src: Tensor, tgt: Tensor,
    heads: Sequence[int] | None,
) -> list[Hook]:
    """Knockout in a linear-attention layer (Qwen3.5), which has no attention matrix: the
    target queries of the knocked-out heads read the state of a run in which the source
    tokens contributed nothing (no conv input, no write, no decay). Full-sequence runs only."""
    cfg, attn, store = model.cfg, model.blocks[layer].attn, {}
    on = torch.zeros(attn.spec.n_v_heads, dtype=torch.bool, device=cfg.device)
    on[list(range(attn.spec.n_v_heads)) if heads is None else list(heads)] = True
    real = inp.attention_mask.bool().to(cfg.device)
    src, tgt = src.to(cfg.device), tgt.to(cfg.device)

    def save(x: Tensor, hook: Any) -> None:
        store["x"] = x

    def read_hook(read: Tensor, hook: Any) -> Tensor:
        if read.shape[:2] != tgt.shape:
            raise ValueError(f"knockout in linear-attention layer {layer} runs only on the full "
                             f"input {tuple(tgt.shape)}, got {tuple(read.shape[:2])}")
        alt = attn.reads(store["x"], real, skip=src)
        cond = tgt[:, :, None, None] & on[None, None, :, None]
        return torch.where(cond, alt, read)

    pre = f"blocks.{layer}."
    return [(pre + "ln1.hook_normalized", save), (pre + "attn.hook_read", read_hook)]


def _cross_knockout_hooks(
    model: HookedLVLM, inp: LVLMInput, layer: int, src: Tensor, tgt: Tensor,
    heads: Sequence[int] | None,
) -> list[Hook]:
    """Knockout in a gated cross-attention layer (see the module docstring): the scores of the
    cut edges get the dtype minimum, and a query left with no image key gets a zero pattern."""
    cfg = model.cfg
    device = cfg.device
    on = torch.zeros(cfg.n_heads, dtype=torch.bool, device=device)
    on[list(range(cfg.n_heads)) if heads is None else list(heads)] = True
    is_image = (inp.input_ids == cfg.image_token_id).to(device)
    index = (is_image.cumsum(-1) - 1).clamp(min=0)  # each token's image number in its example
    n_max = max(max(inp.images_per_example), 1)
    cut = torch.zeros(len(inp), n_max, dtype=torch.bool, device=device)
    rows, cols = (is_image & src.to(device)).nonzero(as_tuple=True)
    cut[rows, index[rows, cols]] = True  # [batch, image]: the source images
    tgt, store = tgt.to(device), {}

    def scores_hook(scores: Float[Tensor, "batch head q k"], hook: Any) -> Tensor:
        b, _, q, k = scores.shape
        if b != tgt.shape[0] or q > tgt.shape[1]:
            raise ValueError(f"knockout built for input {tuple(tgt.shape)} got cross-attention "
                             f"scores {tuple(scores.shape)} in layer {layer}: run it on the "
                             "same input (or its last positions after a KV cache)")
        cols = cut.repeat_interleave(k // n_max, dim=-1)  # [batch, image_pos]
        queries = tgt[:, tgt.shape[1] - q :]  # the last q positions: a suffix after a cache
        edges = queries[:, None, :, None] & on[None, :, None, None] & cols[:, None, None, :]
        floor = torch.finfo(scores.dtype).min
        out = scores.masked_fill(edges, floor)
        store["empty"] = edges.any(-1) & ~(out > floor / 2).any(-1)
        return out

    def pattern_hook(pattern: Float[Tensor, "batch head q k"], hook: Any) -> Tensor:
        return pattern.masked_fill(store.pop("empty")[..., None], 0.0)

    pre = f"blocks.{layer}.cross_attn."
    return [(pre + "hook_attn_scores", scores_hook), (pre + "hook_pattern", pattern_hook)]


@contextmanager
def knockout(
    model: HookedLVLM,
    inp: LVLMInput,
    source: Group,
    target: Group,
    layers: int | Sequence[int],
    heads: Sequence[int] | None = None,
) -> Iterator[Any]:
    """Context manager: inside it, ``model`` runs with the knockout of :func:`knockout_hooks`.

    Example:
        >>> with knockout(model, inp, "image", "final", window_layers(10, 9, 32)):
        ...     logits = model(inp)
    """
    with model.hooks(fwd_hooks=knockout_hooks(model, inp, source, target, layers, heads)):
        yield model


@torch.no_grad()
def knockout_effect(
    model: HookedLVLM,
    inp: LVLMInput,
    source: Group,
    target: Group,
    layers: int | Sequence[int],
    metric: str | Metric = "prob",
    heads: Sequence[int] | None = None,
    relative: bool | None = None,
) -> Float[Tensor, " batch"]:
    """Effect of a knockout on an answer metric at the final position.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        inp: Input with ``answer_ids``.
        source: Key group (name or bool mask).
        target: Query group (name or bool mask).
        layers: Layers to knock out in.
        metric: A name from :data:`~lvlm_lens.interventions.metrics.METRICS`, or a callable
            ``(logits, answer_ids) -> [batch]``.
        heads: Query heads to knock out in (default: all).
        relative: ``(new - clean) / clean`` if true, ``new - clean`` if false; by default
            relative for ``"prob"`` (Zhang et al.'s relative probability change), else absolute.

    Returns:
        One value per example.
    """
    if inp.answer_ids is None:
        raise ValueError("knockout_effect needs inp.answer_ids (pass answers= to model.prepare)")
    hooks = knockout_hooks(model, inp, source, target, layers, heads)
    answers = inp.answer_ids.to(model.cfg.device)
    clean = model(inp)[:, -1]
    new = model.run_with_hooks(inp, fwd_hooks=hooks)[:, -1]
    if metric == "prob" and relative in (None, True):
        return relative_prob_change(new, clean, answers)
    fn = get_metric(metric)
    m_new, m_clean = fn(new, answers), fn(clean, answers)
    return (m_new - m_clean) / m_clean if relative else m_new - m_clean
