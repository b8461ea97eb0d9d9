"""Key/value cache of a processed prefix, shareable by a batch of suffixes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


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
    """

    keys: list[Float[Tensor, "batch kv_head pos d_head"]]
    values: list[Float[Tensor, "batch kv_head pos d_head"]]
    attention_mask: Int[Tensor, "batch pos"]
    frozen: bool = True
    alt_keys: list[Float[Tensor, "batch kv_head pos d_head"]] | None = None
    alt_values: list[Float[Tensor, "batch kv_head pos d_head"]] | None = None
    next_position: Int[Tensor, " batch"] | None = None

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

    def append(self, kvs: list[tuple[Tensor, Tensor]], attention_mask: Int[Tensor, "batch pos"]):
        """Extend the (unfrozen) cache in place with the keys/values of new tokens."""
        if self.frozen or self.alt_keys is not None:
            raise ValueError("this KV cache is frozen; build it with frozen=False to extend it")
        self.next_position = self.start_positions() + attention_mask.long().sum(-1).to(
            self.attention_mask.device
        )
        self.keys = [torch.cat([k, nk], dim=2) for k, (nk, _) in zip(self.keys, kvs, strict=True)]
        self.values = [
            torch.cat([v, nv], dim=2) for v, (_, nv) in zip(self.values, kvs, strict=True)
        ]
        self.attention_mask = torch.cat([self.attention_mask, attention_mask], dim=1)


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
