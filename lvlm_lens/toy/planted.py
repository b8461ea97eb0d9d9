"""A planted circuit: the bundled toy with only a known set of heads able to read the image.

Every other head's text queries (positions after the image) are masked off the image keys, so
the image reaches the answer only through the planted heads: ablating any other head's image
keys/values changes nothing. A head ranking is then scored by how many planted heads it puts
in its top ``k`` (recall, precision at ``k``; ``docs/toy_model.md``, "Planted circuit").

No training: the mask is added to the shipped bundled toy as permanent hooks on
``hook_attn_scores``, so the check runs in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from lvlm_lens.attribution.head_attribution import (
    AttributionConfig,
    build_engine,
    head_attribution,
)
from lvlm_lens.attribution.rankings import (
    attention_weight,
    attribution_patching,
    single_head_ablation,
)
from lvlm_lens.data import synthetic_records
from lvlm_lens.interventions.ablation import BaselineKV, HeadAblation, compute_baseline
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.toy import toy_checkpoint_path

#: The ranking methods compared on the planted circuit (keys of :func:`rank_heads`).
METHODS = ("head_attribution", "single_head_ablation", "attention_weight", "attribution_patching")
#: Score given to masked (text query, image key) pairs: exp underflows to exactly 0 in float32,
#: and unlike -inf it keeps the gradients of attribution patching finite.
_MASKED = -1e9


@dataclass
class PlantedCircuit:
    """A toy whose image reaches the text positions only through ``heads``.

    Attributes:
        model: The bundled toy with the mask hooks (permanent).
        inp: The examples (one prompt template, so every row has the same layout).
        heads: The planted ``(layer, head)`` pairs.
        baseline: Blank-image keys/values of ``inp`` (the ablation's baseline).
    """

    model: HookedLVLM
    inp: LVLMInput
    heads: list[tuple[int, int]]
    baseline: BaselineKV

    @property
    def truth(self) -> torch.Tensor:
        """``[n_layers, n_heads]`` bool, ``True`` at the planted heads."""
        cfg = self.model.cfg
        mask = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.bool)
        for layer, head in self.heads:
            mask[layer, head] = True
        return mask


def planted_heads(n_layers: int, n_heads: int, k: int, seed: int) -> list[tuple[int, int]]:
    """``k`` distinct heads drawn uniformly with ``seed``, sorted by (layer, head)."""
    if not 1 <= k <= n_layers * n_heads:
        raise ValueError(f"k must be in [1, {n_layers * n_heads}], got {k}")
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randperm(n_layers * n_heads, generator=gen)[:k].sort().values.tolist()
    return [(i // n_heads, i % n_heads) for i in flat]


def _mask_hook(keep: Tensor, image: Tensor, last: int) -> Callable[..., Tensor]:
    blocked = ~keep

    def hook(scores: Tensor, hook: Any) -> Tensor:
        q, k = scores.shape[-2:]  # with a prefix cache, the queries are the last q positions
        text_q = torch.arange(k - q, k, device=scores.device) > last
        pairs = text_q[:, None] & image[:k].to(scores.device)[None, :]
        cut = blocked.to(scores.device)[None, :, None, None] & pairs[None, None]
        return scores.masked_fill(cut, _MASKED)

    return hook


def plant_circuit(model: HookedLVLM, inp: LVLMInput, heads: Sequence[tuple[int, int]]) -> None:
    """Mask every head but ``heads`` off the image keys for the text queries of ``inp``'s layout.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`; gets permanent hooks (``reset_hooks(True)``
            removes them).
        inp: Inputs that all share one layout (same image positions in every row).
        heads: The ``(layer, head)`` pairs left able to read the image.
    """
    image = inp.groups["image"]
    if not bool((image == image[0]).all()):
        raise ValueError("inp: every row must have its image at the same positions")
    cfg = model.cfg
    keep = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.bool)
    for layer, head in heads:
        keep[layer, head] = True
    last = int(image[0].nonzero().max())
    for layer in range(cfg.n_layers):
        model.add_hook(f"blocks.{layer}.attn.hook_attn_scores",
                       _mask_hook(keep[layer], image[0], last), is_permanent=True)  # fmt: skip


def planted_toy(
    heads: Sequence[tuple[int, int]] | None = None,
    *,
    k: int = 6,
    seed: int = 0,
    n_examples: int = 8,
    data_seed: int = 77,
) -> PlantedCircuit:
    """The bundled toy with a planted circuit, and examples to rank its heads on.

    Args:
        heads: The planted heads; ``None``: :func:`planted_heads` ``(k, seed)``.
        k: Planted heads drawn when ``heads`` is ``None``.
        seed: Seed of that draw.
        n_examples: Synthetic examples (prompt template 0, answer = the class).
        data_seed: Seed of the examples.
    """
    from lvlm_lens.model.hooked_lvlm import HookedLVLM

    model = HookedLVLM.from_pretrained(toy_checkpoint_path(), device="cpu")
    cfg = model.cfg
    chosen = list(heads) if heads is not None else planted_heads(cfg.n_layers, cfg.n_heads, k, seed)
    recs = synthetic_records(n_examples, seed=data_seed)
    inp = model.prepare([r.image for r in recs], [r.prompt for r in recs],
                        answers=[r.answer for r in recs])  # fmt: skip
    plant_circuit(model, inp, chosen)
    baseline = compute_baseline(model, inp, HeadAblation())
    return PlantedCircuit(model, inp, chosen, baseline)


def rank_heads(
    circuit: PlantedCircuit, n_masks: int = 300, seed: int = 0
) -> dict[str, Float[Tensor, "n_layers n_heads"]]:
    """Every method of :data:`METHODS`, averaged over the examples (larger = more important).

    Head attribution uses ``n_masks`` random masks (rate 5 %, ridge, ``seed``); the others
    their defaults (attention weight from the final query; blank-image baseline throughout).
    """
    model, inp, base = circuit.model, circuit.inp, circuit.baseline
    config = AttributionConfig(n_masks=n_masks, seed=seed)
    engine = build_engine(model, inp, base, config.ablation, config.metric, config.batch_size)
    result = head_attribution(model, inp, config, baseline=base, progress=False)
    return {
        "head_attribution": result.importance.mean(0).float(),
        "single_head_ablation": single_head_ablation(engine, progress=False).mean(0).float(),
        "attention_weight": attention_weight(model, inp).mean(0).float(),
        "attribution_patching": attribution_patching(model, inp, base).mean(0).float(),
    }


def recall_precision(
    scores: Tensor, truth: Tensor, k: int, absolute: bool = False
) -> tuple[float, float]:
    """Recall and precision at ``k`` of the true heads among the ``k`` top-scored heads.

    Ties are broken by head index (stable sort), so a run is reproducible. ``absolute`` ranks
    by ``|score|`` (a head whose ablation *raises* the metric counts as found).
    """
    if scores.shape != truth.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and truth {tuple(truth.shape)} differ")
    if absolute:
        scores = scores.abs()
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:k]
    hits = int(truth.flatten()[order].sum())
    return hits / int(truth.sum()), hits / k


def planted_report(
    seeds: Sequence[int] = (0, 1, 2, 3, 4), k: int = 6, n_masks: int = 300
) -> pd.DataFrame:
    """Recall / precision at ``k`` and ``2k`` of every method, one planted set per seed.

    Returns:
        One row per (seed, method, at): ``recall``, ``precision`` (signed scores) and
        ``abs_recall`` (ranked by ``|score|``).
    """
    rows = []
    for seed in seeds:
        circuit = planted_toy(k=k, seed=seed)
        truth = circuit.truth
        for method, scores in rank_heads(circuit, n_masks=n_masks).items():
            for at in (k, 2 * k):
                recall, precision = recall_precision(scores, truth, at)
                abs_recall, _ = recall_precision(scores, truth, at, absolute=True)
                rows.append(dict(seed=seed, method=method, at=at, recall=recall,
                                 precision=precision, abs_recall=abs_recall))  # fmt: skip
    return pd.DataFrame(rows)
