"""Key/value cache of a processed prefix, shareable by a batch of suffixes (with the recurrent
state of any linear-attention layer, and the image side cross-attention layers read)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lvlm_lens.model.cross_attention import CrossInput


@dataclass
class RecurrentState:
    """What a linear-attention layer (Qwen3.5's Gated-DeltaNet) keeps of the tokens before.

    Attributes:
        state: Per value head, the delta-rule state after them.
        conv: The last ``conv_kernel - 1`` inputs of its causal conv (the fused q/k/v
            projection of the last real tokens, zeros before the first one).
    """

    state: Float[Tensor, "batch head d_k d_v"]
    conv: Float[Tensor, "batch channel tail"]

    def rows(self, r: int) -> RecurrentState:
        """The state of each example repeated for ``r`` consecutive rows (example-major)."""
        if r == 1:
            return self
        return RecurrentState(self.state.repeat_interleave(r, 0), self.conv.repeat_interleave(r, 0))


#: What a layer's run leaves for the cache: post-RoPE ``(key, value)`` or a recurrent state.
LayerMemory = tuple[Tensor, Tensor] | RecurrentState


@dataclass
class KVCache:
    """Post-RoPE keys and values of a prefix, one ``[batch, kv_head, pos, d_head]`` pair per layer.

    A forward pass given ``past_kv_cache=cache`` attends to the prefix without copying it. Its
    batch may be ``r`` times the cache's (rows grouped example-major: rows ``i*r .. i*r+r-1``
    continue prefix ``i``), which is how many suffixes share one prefix. A ``frozen`` cache
    is never modified; an unfrozen one (used by ``generate``) is extended in place.

    Attributes:
        keys: Per layer, the prefix keys.
        values: Per layer, the prefix values.
        attention_mask: 1 at real prefix tokens, 0 at left padding.
        frozen: Whether forward passes leave the cache unchanged.
        alt_keys: Optional alternative prefix keys per layer (e.g. with baseline keys at the
            image positions), read by the query heads a ``HeadSwitch`` selects.
        alt_values: Alternative prefix values, likewise.
        next_position: Per example, the rotary position of the next token (``1 +`` the largest
            position in the prefix: under M-RoPE an image advances positions by less than its
            token count); ``None`` means the number of real prefix tokens.
        states: Per layer, a linear-attention layer's :class:`RecurrentState` after the prefix
            (``None`` at a full-attention layer; its ``keys`` / ``values`` are then empty,
            ``[batch, 0, pos, 0]``); ``None`` for a model without linear attention.
        alt_states: Per layer, the alternative state (e.g. built from the baseline's input at
            the image positions), read by the heads a ``HeadSwitch`` selects.
        cross: With cross-attention layers (Llama 3.2 Vision), what the tokens after the prefix
            read (:meth:`CrossInput.last <lvlm_lens.model.cross_attention.CrossInput.last>`):
            the image side, its layers' image keys / values (``cross.kv``; those layers'
            ``keys`` / ``values`` here are the same, ``[batch, kv_head, image_pos, d_head]``,
            never extended) and the last prefix token's mask row; ``None`` otherwise.
    """

    keys: list[Float[Tensor, "batch kv_head pos d_head"]]
    values: list[Float[Tensor, "batch kv_head pos d_head"]]
    attention_mask: Int[Tensor, "batch pos"]
    frozen: bool = True
    alt_keys: list[Float[Tensor, "batch kv_head pos d_head"]] | None = None
    alt_values: list[Float[Tensor, "batch kv_head pos d_head"]] | None = None
    next_position: Int[Tensor, " batch"] | None = None
    states: list[RecurrentState | None] | None = None
    alt_states: list[RecurrentState | None] | None = None
    cross: CrossInput | None = None

    @classmethod
    def from_run(
        cls, kvs: list[LayerMemory | None], attention_mask: Int[Tensor, "batch pos"], **kwargs
    ) -> KVCache:
        """The cache of a run's per-layer memories (``run_blocks``' second output)."""
        keys, values, states = [], [], []
        for kv in kvs:
            k, v = _placeholder(kv, attention_mask) if _stands_in(kv) else kv
            keys.append(k)
            values.append(v)
            states.append(kv if isinstance(kv, RecurrentState) else None)
        if all(st is None for st in states):
            states = None
        return cls(keys, values, attention_mask, states=states, **kwargs)

    @property
    def batch_size(self) -> int:
        """Number of cached examples."""
        return self.attention_mask.shape[0]

    @property
    def length(self) -> int:
        """Number of cached positions (padding included)."""
        return self.attention_mask.shape[1]

    def rows_per_example(self, batch: int) -> int:
        """How many query rows continue each cached example; checks the batch fits."""
        if batch % self.batch_size:
            raise ValueError(
                f"a batch of {batch} cannot continue a KV cache of batch {self.batch_size}: "
                "the batch must be a multiple of the cache's, grouped example-major"
            )
        r = batch // self.batch_size
        if r > 1 and not self.frozen:
            raise ValueError("only a frozen KV cache can be shared by several suffixes per example")
        return r

    def start_positions(self, rows_per_example: int = 1) -> Int[Tensor, " rows"]:
        """Rotary position of the first new token of each query row."""
        start = self.next_position
        if start is None:
            start = self.attention_mask.long().sum(-1)
        return start.repeat_interleave(rows_per_example, dim=0)

    def append(self, kvs: list[LayerMemory | None], attention_mask: Int[Tensor, "batch pos"]):
        """Extend the (unfrozen) cache in place with the keys/values of new tokens (and replace
        a linear-attention layer's state by the one after them)."""
        if self.frozen or self.alt_keys is not None:
            raise ValueError("this KV cache is frozen; build it with frozen=False to extend it")
        self.next_position = self.start_positions() + attention_mask.long().sum(-1).to(
            self.attention_mask.device
        )
        new = [_placeholder(kv, attention_mask) if _stands_in(kv) else kv for kv in kvs]
        fixed = () if self.cross is None or self.cross.kv is None else self.cross.kv
        self.keys = [k if la in fixed else torch.cat([k, nk], dim=2)
                     for la, (k, (nk, _)) in enumerate(zip(self.keys, new, strict=True))]
        self.values = [v if la in fixed else torch.cat([v, nv], dim=2)
                       for la, (v, (_, nv)) in enumerate(zip(self.values, new, strict=True))]
        if self.states is not None:
            self.states = [kv if isinstance(kv, RecurrentState) else None for kv in kvs]
        self.attention_mask = torch.cat([self.attention_mask, attention_mask], dim=1)


def _placeholder(kv: RecurrentState | None, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Empty keys/values ``[batch, 0, pos, 0]`` standing for a linear-attention layer's (or a
    cross-attention layer's in a run without an image, ``None``)."""
    b, s = attention_mask.shape
    like = attention_mask.float() if kv is None else kv.state
    empty = like.new_zeros(b, 0, s, 0)
    return empty, empty


def _stands_in(kv: LayerMemory | None) -> bool:
    """Whether a layer's memory is kept as a placeholder (no keys/values of its own)."""
    return kv is None or isinstance(kv, RecurrentState)


@dataclass
class HeadSwitch:
    """Which query heads read alternative keys/values, per batch row and layer.

    Attributes:
        select: ``True`` where (row, layer, query head) reads the alternative.
        self_keys: Per layer, alternative keys for the new tokens' positions ``self_src``
            (``[1 or batch, kv_head, pos, d_head]``), or ``None`` to switch only cached segments.
        self_values: Per layer, alternative values, likewise.
        self_src: Positions of the new tokens that have alternatives.
        self_queries: Queries among the new tokens that may read those alternatives (default:
            all of them).
    """

    select: Bool[Tensor, "batch n_layers n_heads"]
    self_keys: list[Tensor] | None = None
    self_values: list[Tensor] | None = None
    self_src: Bool[Tensor, "batch_or_1 pos"] | None = None
    self_queries: Bool[Tensor, "batch_or_1 pos"] | None = None
    index: list[tuple[Tensor, Tensor] | None] | None = None

    @classmethod
    def sparse(
        cls,
        select: Bool[Tensor, "batch n_layers n_heads"],
        device: torch.device | str,
        dense_above: float = 0.25,
        **kwargs,
    ) -> HeadSwitch:
        """A switch whose layers with few selected heads compute only those.

        The indices are found on the host (``select`` is read there once: pass it on the CPU,
        where masks are sampled, and nothing waits for the device) and sent in one copy,
        asynchronous from pinned memory on CUDA, so a loop over batches of masks never
        synchronises with the device.
        """
        device = torch.device(device)
        sel = select.detach().cpu().numpy()
        n = sel.shape[0] * sel.shape[2]
        index: list[tuple[int, int] | None] = []
        parts = []
        for layer in range(sel.shape[1]):
            rows, heads = np.nonzero(sel[:, layer])
            if len(rows) > dense_above * n:
                index.append(None)
                continue
            index.append((len(rows), len(parts)))
            parts += [rows, heads]
        flat = torch.from_numpy(np.concatenate([*parts, sel.reshape(-1)]).astype(np.int64))
        if device.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(device, non_blocking=True)
        sizes = [len(p) for p in parts] + [sel.size]
        pieces = flat.split(sizes)
        select_dev = pieces[-1].view(sel.shape).bool()
        out = [None if i is None else (pieces[i[1]], pieces[i[1] + 1]) for i in index]
        return cls(select_dev, index=out, **kwargs)
