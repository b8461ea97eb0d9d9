"""Head-attribution results: per-example and pooled coefficients, saved as safetensors + JSON.

Sign convention: masks are ``True`` where a head is *ablated*, so a head whose ablation lowers
the metric (an important head) has a **negative** coefficient. ``importance = -coef`` and
:meth:`AttributionResult.top_heads` ranks by it (most negative β first).
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from lvlm_lens.attribution.regression import LinearFit
from lvlm_lens.files import atomic_save, atomic_write

TENSORS_FILE, META_FILE = "attribution.safetensors", "attribution.json"
_TENSORS = ("coef", "intercepts", "pearson_r", "r2", "pooled_coef", "masks", "metrics")
_SCALARS = ("pooled_intercept", "pooled_r", "pooled_r2", "options", "model_name", "example_ids",
            "layer_kinds")


@dataclass
class AttributionResult:
    """Head-attribution coefficients of a set of examples.

    Attributes:
        coef: Per-example ``β``; negative = ablating the head lowers the metric.
        intercepts: Per-example ``β₀`` (metric with no head ablated, as predicted).
        pearson_r: Per-example held-out Pearson r of the fit.
        r2: Per-example held-out R².
        pooled_coef: ``β`` of one fit over all examples (``fit_pooled``), if any.
        pooled_intercept: Mean per-example intercept of the pooled fit.
        pooled_r: Held-out (within-example) Pearson r of the pooled fit.
        pooled_r2: Held-out (within-example) R² of the pooled fit.
        options: JSON-serialisable run settings (metric, rate, n_masks, seed, baseline, scope,
            method, ...). Tuples come back as lists after :meth:`load`.
        model_name: Model the result belongs to.
        example_ids: Optional name per example (e.g. image ids).
        masks: Optional raw ablation masks, e.g. ``[n_masks, L, H]`` or ``[n_examples, ...]``.
        metrics: Optional raw metric of each masked run, matching ``masks``.
        layer_kinds: Optional kind of each layer's heads (``self``, ``cross`` or ``linear``;
            ``HookedLVLM.attn_kind``), shown as the ``kind`` column of :meth:`to_csv`.
    """

    coef: Float[Tensor, "n_examples n_layers n_heads"]
    intercepts: Float[Tensor, " n_examples"]
    pearson_r: Float[Tensor, " n_examples"]
    r2: Float[Tensor, " n_examples"]
    pooled_coef: Float[Tensor, "n_layers n_heads"] | None = None
    pooled_intercept: float | None = None
    pooled_r: float | None = None
    pooled_r2: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    example_ids: list[str] | None = None
    masks: Bool[Tensor, "*shape"] | None = None
    metrics: Float[Tensor, "*shape_metrics"] | None = None
    layer_kinds: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.coef)
        if self.layer_kinds is not None and len(self.layer_kinds) != self.coef.shape[1]:
            raise ValueError(f"layer_kinds must have {self.coef.shape[1]} entries (one per "
                             f"layer), got {len(self.layer_kinds)}")
        shapes = [tuple(t.shape) for t in (self.coef, self.intercepts, self.pearson_r, self.r2)]
        if self.coef.ndim != 3 or shapes[1:] != [(n,)] * 3:
            raise ValueError(f"need coef [n, L, H] and intercepts, pearson_r, r2 [n], got {shapes}")
        if self.pooled_coef is not None and self.pooled_coef.shape != self.coef.shape[1:]:
            raise ValueError(f"pooled_coef must be {tuple(self.coef.shape[1:])}")
        if self.example_ids is not None and len(self.example_ids) != n:
            raise ValueError(f"example_ids must have {n} entries, got {len(self.example_ids)}")

    @classmethod
    def from_fits(
        cls, fits: Sequence[LinearFit], pooled: LinearFit | None = None, **kwargs: Any
    ) -> AttributionResult:
        """Collect per-example fits (and a pooled fit) from :mod:`lvlm_lens.attribution.regression`.

        Args:
            fits: One :class:`LinearFit` per example.
            pooled: Optional fit over all examples.
            **kwargs: Other fields (``options``, ``model_name``, ``masks``, ...).

        Returns:
            The result.
        """

        def vec(name: str) -> Tensor:
            return torch.tensor([getattr(f, name) for f in fits], dtype=torch.float64)

        if pooled is not None:
            kwargs |= dict(pooled_coef=pooled.coef, pooled_intercept=pooled.intercept)
            kwargs |= dict(pooled_r=pooled.pearson_r, pooled_r2=pooled.r2)
        coef = torch.stack([f.coef for f in fits])
        return cls(coef, vec("intercept"), vec("pearson_r"), vec("r2"), **kwargs)

    @property
    def importance(self) -> Float[Tensor, "n_examples n_layers n_heads"]:
        """Per-example ``-coef``: large = ablating the head lowers the metric most."""
        return -self.coef

    @property
    def pooled_importance(self) -> Float[Tensor, "n_layers n_heads"] | None:
        """``-pooled_coef`` (None without a pooled fit)."""
        return None if self.pooled_coef is None else -self.pooled_coef

    def scores(
        self, pooled: bool = True, example: int | None = None
    ) -> Float[Tensor, "n_layers n_heads"]:
        """Importance map ``-β`` used for rankings (e.g. by
        :func:`~lvlm_lens.attribution.curves.evaluate_ranking`).

        Args:
            pooled: Use the pooled fit (for a single example: its own fit); if False, the mean
                of the per-example coefficients.
            example: If given, that example's coefficients (overrides ``pooled``).

        Returns:
            ``[n_layers, n_heads]`` importance, higher = more important.
        """
        if example is not None:
            return -self.coef[example]
        if not pooled or (self.pooled_coef is None and self.coef.shape[0] == 1):
            return -self.coef.mean(0)
        if self.pooled_coef is None:
            raise ValueError("no pooled fit stored; use pooled=False or example=i")
        return -self.pooled_coef

    def top_heads(
        self, k: int, pooled: bool = True, example: int | None = None
    ) -> list[tuple[int, int]]:
        """The ``k`` most important heads: most negative coefficient first.

        Args:
            k: Number of heads (capped at the number of heads).
            pooled: As in :meth:`scores`.
            example: As in :meth:`scores`.

        Returns:
            ``(layer, head)`` pairs; ties keep layer-major order; heads with a nan score last.
        """
        s = self.scores(pooled, example)
        flat = s.flatten().nan_to_num(nan=-torch.inf)
        order = torch.sort(flat, descending=True, stable=True).indices[: max(k, 0)]
        return [divmod(int(i), s.shape[1]) for i in order]

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``attribution.safetensors`` (tensors) and ``attribution.json`` (the rest).

        Each file is written to a temporary file in ``folder`` and moved into place with
        ``os.replace``, so an interrupted save never leaves a partial file. Both files carry the
        same random ``save_id``; :meth:`load` refuses a mismatched pair.

        Args:
            folder: Destination folder (created if missing).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_id = uuid.uuid4().hex
        tensors = {n: getattr(self, n) for n in _TENSORS if getattr(self, n) is not None}
        meta = {n: getattr(self, n) for n in _SCALARS}
        meta |= {"format": "lvlm_lens.attribution", "version": 1, "save_id": save_id}
        try:
            text = json.dumps(meta, indent=2)
        except TypeError as e:
            raise TypeError(f"options must be JSON-serialisable: {e}") from e
        atomic_save(tensors, folder / TENSORS_FILE, {"save_id": save_id})
        atomic_write(folder / META_FILE, lambda p: p.write_text(text))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> AttributionResult:
        """Read a result written by :meth:`save`.

        Args:
            folder: Folder holding ``attribution.safetensors`` and ``attribution.json``.

        Returns:
            The result (tensors on CPU).
        """
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        with safe_open(folder / TENSORS_FILE, "pt") as f:
            tensor_id = (f.metadata() or {}).get("save_id")
        if tensor_id != meta.get("save_id"):
            raise ValueError(f"{folder}: {TENSORS_FILE} and {META_FILE} are from different saves")
        scalars = {n: meta.get(n) for n in _SCALARS}
        scalars["options"] = scalars["options"] or {}
        return cls(**load_file(folder / TENSORS_FILE), **scalars)

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write one row per head: ``layer, head, coef_<example>..., coef_pooled`` (``kind``
        after ``head`` when ``layer_kinds`` is set).

        Args:
            path: Destination CSV file (written atomically).
        """
        ids = self.example_ids or [str(i) for i in range(len(self.coef))]
        cols = [self.coef[i].flatten().tolist() for i in range(len(self.coef))]
        kinds = self.layer_kinds
        header = ["layer", "head", *(["kind"] if kinds else [])] + [f"coef_{i}" for i in ids]
        if self.pooled_coef is not None:
            cols.append(self.pooled_coef.flatten().tolist())
            header.append("coef_pooled")
        n_heads = self.coef.shape[-1]

        def write(p: Path) -> None:
            with open(p, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                for j, row in enumerate(zip(*cols, strict=True)):
                    layer, head = divmod(j, n_heads)
                    kind = [kinds[layer]] if kinds else []
                    w.writerow([layer, head, *kind, *(repr(v) for v in row)])

        atomic_write(path, write)
