"""The fast masked-run engine: many head-ablation masks per example, prefix shared.

Under scope ``text`` everything up to the last source token is identical under every mask.
The engine runs that prefix once per example (clean keys/values, plus the baseline
alternative at the source positions), then runs only the text suffix for a batch of masks;
inside the attention each (mask, layer, query head) reads clean or baseline source K/V. The
prefix cache is shared by the whole batch, never copied per mask: memory is
O(prefix + batch x suffix). Under scope ``all`` masks are batched over full sequences.
Where the prefix would depend on the tokens after it (Gemma 3's tokens of one image attend to
each other both ways, so a source ending inside an image cuts that image), scope ``text``
also runs full sequences, with only the queries after the last source reading the baseline.
:func:`run_reference` is the plain path, one hooked full forward per mask.
A linear-attention layer (Qwen3.5) has no prefix K/V: its prefix cache is the recurrent state
and conv tail after the prefix, per baseline side (clean, and the layer run again with the
baseline's input at the source positions); each (mask, value head) continues one or the other.
Under full sequences its ablated heads read a second run of the layer on the baseline's input at
the source positions, as the reference hooks do.
A cross-attention layer (Llama 3.2 Vision) reads the image side, not the sequence: its image
keys/values are computed once per example (with the prefix cache under scope ``text``, in the
example's cross input under full sequences) and its baseline alternative is the baseline
image's side, all of it; each (mask, query head) reads one or the other.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lvlm_lens.interventions.ablation import (
    BaselineKV,
    HeadAblation,
    check_heads,
    head_ablation_hooks,
    query_scope,
)
from lvlm_lens.interventions.metrics import final_logits, get_metric
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.kv_cache import HeadSwitch, KVCache
from lvlm_lens.model.layout import TokenLayout
from lvlm_lens.progress import progress_bar, show_progress

Metric = Callable[[Tensor, Tensor], Tensor]


@dataclass
class _Example:
    """What one example's masked runs share."""

    x: Float[Tensor, "1 pos d_model"]  # embeddings of the tokens the masked runs process
    mask: Int[Tensor, "1 pos"]
    answer: Int[Tensor, " 1"]
    layout: TokenLayout  # positions and image blocks of those tokens
    cache: KVCache | None = None  # scope text: the shared prefix
    switch_keys: list[Tensor] | None = None  # full sequences: baseline K/V at the source
    switch_values: list[Tensor] | None = None
    src: Bool[Tensor, "1 pos"] | None = None
    queries: Bool[Tensor, "1 pos"] | None = None  # full sequences, scope text: who reads it


def _cross_layers(model: HookedLVLM) -> tuple[int, ...]:
    """The gated cross-attention layers (Llama 3.2 Vision)."""
    cross = model.cfg.decoder.cross_attention
    return () if cross is None else cross.layers


def clean_answers(model: HookedLVLM, inp: LVLMInput) -> Int[Tensor, " batch"]:
    """``inp.answer_ids``, or else the model's own greedy answer on the clean input."""
    if inp.answer_ids is not None:
        return inp.answer_ids.to(model.cfg.device)
    with torch.no_grad():
        return final_logits(model(inp)).argmax(-1)


def _prefix_cache(
    model: HookedLVLM, x: Tensor, mask: Tensor, layout: TokenLayout, src: Tensor,
    keys: list[Tensor], values: list[Tensor],
) -> KVCache:
    """The frozen cache of one example's prefix (up to its last source token), both sides:
    clean K/V, and the baseline's at the source positions as the alternative; a
    linear-attention layer (Qwen3.5): its clean state and conv tail, and as the alternative
    those of the layer run again on its input with the baseline's at the source positions."""
    lin, cross = model.cfg.decoder.linear_attention, _cross_layers(model)
    linear = () if lin is None else lin.layers
    inputs: dict[int, Tensor] = {}

    def save(t: Tensor, hook: Any, layer: int) -> None:
        inputs[layer] = t

    hooks = [(f"blocks.{la}.ln1.hook_normalized",
              lambda t, hook, la=la: save(t, hook, la)) for la in linear]  # fmt: skip
    with model.hooks(fwd_hooks=hooks) if hooks else contextlib.nullcontext():
        _, kvs = model.run_blocks(x, mask, layout=layout)
    cache = KVCache.from_run(kvs, mask, frozen=True)
    s, real = src[:, None, :, None], mask.bool()

    def alt(la: int, b: Tensor, c: Tensor) -> Tensor:
        # a cross-attention layer's cached K/V: the image side, all of it the source
        return c if la in linear else b if la in cross else torch.where(s, b, c)

    cache.alt_keys = [alt(la, b, c) for la, (b, c) in enumerate(zip(keys, cache.keys,
                                                                    strict=True))]
    cache.alt_values = [alt(la, b, c) for la, (b, c) in enumerate(zip(values, cache.values,
                                                                      strict=True))]
    if linear:
        cache.alt_states = [
            model.blocks[la].attn.state_after(
                torch.where(src[..., None], keys[la][:, 0].to(inputs[la].dtype), inputs[la]),
                real,
            ) if la in linear else None
            for la in range(model.cfg.n_layers)
        ]  # fmt: skip
    return cache


class AblationEngine:
    """Runs batches of head-ablation masks on every example of a batch.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        inp: The examples (a padded batch is fine; each example is run on its own).
        baseline: Baseline keys/values from :func:`~lvlm_lens.interventions.compute_baseline`.
        config: The ablation options (scope, source).
        metric: Metric name (:mod:`~lvlm_lens.interventions.metrics`) or ``f(logits, answer_ids)``.
        batch_size: Masks per forward pass.

    Attributes:
        answers: The answer token per example: ``inp.answer_ids``, or the model's own clean
            answer when the input has none.
        baseline: The baseline keys/values the ablated heads read.
    """

    def __init__(
        self,
        model: HookedLVLM,
        inp: LVLMInput,
        baseline: BaselineKV,
        config: HeadAblation,
        metric: str | Metric = "logit",
        batch_size: int = 64,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.inp, self.config = model, inp, config
        self.metric, self.batch_size = get_metric(metric), batch_size
        self.answers = clean_answers(model, inp)
        self.baseline = baseline
        self._examples: dict[int, _Example] = {}

    def with_metric(self, metric: str | Metric) -> AblationEngine:
        """An engine measuring ``metric`` that shares this one's prefix caches (built or not)."""
        other = copy.copy(self)
        other.metric = get_metric(metric)
        return other

    @torch.no_grad()
    def _example(self, i: int) -> _Example:
        if i in self._examples:
            return self._examples[i]
        model, base = self.model, self.baseline
        ex = self.inp.select(i)
        off = self.inp.shape[1] - ex.shape[1]
        src = base.source[i : i + 1, off:].to(model.cfg.device)
        x, mask = model.embed_input(ex), ex.attention_mask.to(model.cfg.device)
        answer, layout = self.answers[i : i + 1], model.layout(ex)
        cross = _cross_layers(model)
        if cross and layout.cross is not None:  # the image side's K/V, once per example
            layout.cross.kv = {la: model.blocks[la].cross_attn.image_kv(layout.cross.states,
                                                                       hooked=False)
                               for la in cross}  # fmt: skip
        # a cross-attention layer's baseline: the example's image side (its images' columns,
        # the batch's first ones), not sequence columns
        cols = [slice(None, layout.cross.kv[la][0].shape[2]) if la in cross
                else slice(off, None) for la in range(len(base.keys))]  # fmt: skip
        keys = [k[i : i + 1, :, c] for k, c in zip(base.keys, cols, strict=True)]
        values = [v[i : i + 1, :, c] for v, c in zip(base.values, cols, strict=True)]
        cut = int(src[0].nonzero().max()) + 1
        if self.config.scope == "all" or layout.splits_block(cut):
            queries = None
            if self.config.scope == "text":
                queries = query_scope(ex, src, "text").to(model.cfg.device)
            state = _Example(x, mask, answer, layout, switch_keys=keys, switch_values=values,
                             src=src, queries=queries)
        else:
            cache = _prefix_cache(model, x[:, :cut], mask[:, :cut],
                                  layout.cols(slice(None, cut)), src[:, :cut],
                                  [k if la in cross else k[:, :, :cut]
                                   for la, k in enumerate(keys)],
                                  [v if la in cross else v[:, :, :cut]
                                   for la, v in enumerate(values)])  # fmt: skip
            state = _Example(x[:, cut:], mask[:, cut:], answer, layout.cols(slice(cut, None)),
                             cache=cache)
        self._examples[i] = state
        return state

    @torch.no_grad()
    def run_batch(self, i: int, masks: Bool[Tensor, "batch n_layers n_heads"]) -> Tensor:
        """Metric of example ``i`` under each mask of one batch (``True`` = head ablated)."""
        st = self._example(i)
        b = masks.shape[0]
        x, mask = st.x.expand(b, -1, -1), st.mask.expand(b, -1)
        switch = HeadSwitch.sparse(masks, self.model.cfg.device, self_keys=st.switch_keys,
                                   self_values=st.switch_values, self_src=st.src,
                                   self_queries=st.queries)
        resid, _ = self.model.run_blocks(x, mask, st.cache, switch=switch,
                                         layout=st.layout.expand(b))
        logits = self.model.unembed(self.model.ln_final(resid[:, -1]))
        return self.metric(logits, st.answer.expand(b))

    def run(
        self,
        masks: Bool[Tensor, "n_masks n_layers n_heads"],
        examples: list[int] | None = None,
        progress: bool = True,
    ) -> Float[Tensor, "n_examples n_masks"]:
        """Metric of every example under every mask."""
        check_heads(self.model, masks)
        if masks.ndim != 3:
            raise ValueError("masks must be [n_masks, n_layers, n_heads]")
        examples = list(range(len(self.inp))) if examples is None else examples
        masks = masks.cpu()  # the switches' indices are found on the host, once per batch
        out = torch.empty(len(examples), masks.shape[0])
        with show_progress(progress):
            bar = progress_bar(total=len(examples) * masks.shape[0], unit="mask",
                               desc="masked runs")
            for row, i in enumerate(examples):
                values = []  # stay on the device: the loop never waits for it
                for start in range(0, masks.shape[0], self.batch_size):
                    chunk = masks[start : start + self.batch_size]
                    values.append(self.run_batch(i, chunk).float())
                    bar.update(len(chunk))
                out[row] = torch.cat(values).cpu()
            bar.close()
        return out


@torch.no_grad()
def run_reference(
    model: HookedLVLM,
    inp: LVLMInput,
    masks: Bool[Tensor, "n_masks n_layers n_heads"],
    baseline: BaselineKV,
    config: HeadAblation,
    metric: str | Metric = "logit",
    progress: bool = True,
) -> Float[Tensor, "n_examples n_masks"]:
    """The reference path: one full-sequence ``run_with_hooks`` per mask (all examples at once)."""
    fn, answers = get_metric(metric), clean_answers(model, inp)
    out = torch.empty(len(inp), masks.shape[0])
    with show_progress(progress):
        for j in progress_bar(range(masks.shape[0]), unit="mask", desc="reference"):
            hooks = head_ablation_hooks(model, inp, masks[j], baseline, config.scope)
            logits = final_logits(model.run_with_hooks(inp, fwd_hooks=hooks))
            out[:, j] = fn(logits, answers).float().cpu()
    return out
