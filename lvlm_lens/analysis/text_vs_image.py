"""Text-only vs image circuits: are the heads that carry an object from the image the ones that
carry it from a description in words?

Head attribution runs twice on the same objects: with the image (source = the image tokens) and
with a text-only prompt that describes the object (source = the description's tokens). The two
head maps are compared by the overlap of their top-k heads (Jaccard, against the exact
distribution of the overlap of two random k-sets) and by rank correlation, both with bootstrap
CIs over examples; the heads unique to each modality are listed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor

from lvlm_lens.analysis.stats import Estimate, bootstrap_ci, spearman
from lvlm_lens.attribution.head_attribution import AttributionConfig, head_attribution
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.viz.plots import heatmaps

#: Name of the token group added to text-only inputs for the object's description.
DESCRIPTION = "description"


def span_group(
    model: HookedLVLM, inp: LVLMInput, spans: Sequence[str]
) -> Bool[Tensor, "batch pos"]:
    """Tokens that overlap a substring of each example's prompt (e.g. the object's
    description), found from the tokenizer's character offsets as ``prepare`` does.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM` that prepared ``inp``.
        inp: A batch prepared with ``model.prepare`` (``inp.texts`` holds the prompts).
        spans: One substring per example (its first occurrence is used).
    """
    if len(spans) != len(inp) or len(inp.texts) != len(inp):
        raise ValueError(f"need one span and one prompt text per example ({len(inp)})")
    tok = model.tokenizer
    out = torch.zeros(inp.shape, dtype=torch.bool)
    for i, (text, span) in enumerate(zip(inp.texts, spans, strict=True)):
        start = text.find(span)
        if not span or start < 0:
            raise ValueError(f"example {i}: {span!r} does not occur in its prompt {text!r}")
        end = start + len(span)
        bos = tok.bos_token
        enc = tok(text, return_offsets_mapping=True,
                  add_special_tokens=not (bos and text.startswith(bos)))
        counts = iter(len(c) for c in inp.image_coords[inp.image_slice(i)])
        hits = []
        for t, (a, b) in zip(enc.input_ids, enc.offset_mapping, strict=True):
            n = next(counts) if t == model.cfg.image_token_id else 1
            hits += [a < end and b > start and t != model.cfg.image_token_id] * n
        real = inp.attention_mask[i].bool().cpu()
        if len(hits) != int(real.sum()):
            raise ValueError(f"example {i}: re-tokenising its prompt gives {len(hits)} tokens, "
                             f"the input has {int(real.sum())}")
        out[i, real.nonzero().flatten()] = torch.tensor(hits)
    return out


def random_jaccard(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact distribution of the Jaccard index of two independent random ``k``-subsets of
    ``n`` heads: ``(values, probabilities)`` (the overlap is hypergeometric)."""
    i = np.arange(0, k + 1)
    p = np.array([math.comb(k, j) * math.comb(n - k, k - j) for j in i], float) / math.comb(n, k)
    return i / (2 * k - i), p


def top_k_set(scores: np.ndarray, k: int) -> set[int]:
    """Flat indices of the ``k`` largest scores (ties: lower index first)."""
    return set(np.argsort(-scores.ravel(), kind="stable")[:k].tolist())


def jaccard(a: set, b: set) -> float:
    """``|a & b| / |a | b|``."""
    return len(a & b) / len(a | b) if a | b else float("nan")


@dataclass
class TextVsImageConfig:
    """Options of :func:`text_vs_image`.

    Attributes:
        attribution: Head-attribution options shared by both runs (the ablation's source and
            baseline are set per modality below).
        image_baseline: Baseline of the image K/V (default ``zero``, like the text side).
        text_baseline: Baseline of the description's K/V (``zero``: there is no other
            description aligned to the same positions to average).
        k: Size of the top-k sets compared.
        n_boot: Bootstrap resamples over examples.
        seed: Seed of the bootstrap.
    """

    attribution: AttributionConfig = field(default_factory=lambda: AttributionConfig(n_masks=500))
    image_baseline: str = "zero"
    text_baseline: str = "zero"
    k: int = 5
    n_boot: int = 1000
    seed: int = 0


@dataclass
class TextVsImageResult:
    """Image vs text-only head attribution on the same objects.

    Attributes:
        image: Attribution with the image tokens as source.
        text: Attribution with the description tokens as source.
        k: Size of the top-k sets.
        jaccard: Jaccard of the two top-k sets (mean importance over examples), with a
            bootstrap CI over examples and the p-value of a random pair of k-sets reaching it.
        random_jaccard: Expected Jaccard of two random k-sets.
        rank_correlation: Spearman correlation of the two head maps, with a bootstrap CI.
        per_example_jaccard: Mean over examples of each example's own top-k Jaccard, with CI.
    """

    image: AttributionResult
    text: AttributionResult
    k: int
    jaccard: Estimate
    random_jaccard: float
    rank_correlation: Estimate
    per_example_jaccard: Estimate

    def maps(self) -> dict[str, np.ndarray]:
        """Mean importance over examples per modality, ``[n_layers, n_heads]``."""
        return {name: r.importance.mean(0).double().numpy()
                for name, r in (("image", self.image), ("text only", self.text))}

    def top_heads(self) -> dict[str, list[tuple[int, int]]]:
        """The top-k heads of each modality, most important first."""
        out = {}
        for name, m in self.maps().items():
            order = np.argsort(-m.ravel(), kind="stable")[: self.k]
            out[name] = [divmod(int(i), m.shape[1]) for i in order]
        return out

    def unique_heads(self) -> dict[str, list[tuple[int, int]]]:
        """Top-k heads of each modality that are not in the other's top-k."""
        top = self.top_heads()
        img, txt = top["image"], top["text only"]
        return {"image only": [h for h in img if h not in txt],
                "text only": [h for h in txt if h not in img],
                "shared": [h for h in img if h in txt]}

    def to_frame(self) -> pd.DataFrame:
        """One row per head: its kind (``self`` / ``cross`` / ``linear``, when the results
        name it), importance and rank under each modality, top-k membership."""
        maps = self.maps()
        img, txt = maps["image"], maps["text only"]
        n_heads = img.shape[1]
        rank_i = np.argsort(np.argsort(-img.ravel(), kind="stable"))
        rank_t = np.argsort(np.argsort(-txt.ravel(), kind="stable"))
        layer = np.arange(img.size) // n_heads
        kinds = self.image.layer_kinds
        kind = {"kind": np.asarray(kinds)[layer]} if kinds else {}
        return pd.DataFrame({
            "layer": layer, "head": np.arange(img.size) % n_heads, **kind,
            "image_importance": img.ravel(), "text_importance": txt.ravel(),
            "image_rank": rank_i, "text_rank": rank_t,
            "image_top_k": rank_i < self.k, "text_top_k": rank_t < self.k})

    def summary(self) -> pd.DataFrame:
        """The headline numbers with their CIs."""
        return pd.DataFrame([
            {"statistic": f"Jaccard of top-{self.k}", **self.jaccard.as_dict()},
            {"statistic": f"Jaccard of top-{self.k}, random k-sets (expected)",
             "value": self.random_jaccard},
            {"statistic": f"per-example Jaccard of top-{self.k}",
             **self.per_example_jaccard.as_dict()},
            {"statistic": "Spearman of head maps", **self.rank_correlation.as_dict()},
            {"statistic": "held-out fit r, image (median)",
             "value": float(self.image.pearson_r.median())},
            {"statistic": "held-out fit r, text (median)",
             "value": float(self.text.pearson_r.median())},
        ])

    def plot(self) -> Any:
        """Side-by-side head maps with each modality's top-k heads outlined."""
        top = self.top_heads()
        return heatmaps(self.maps(), marks={k: top[k] for k in top})


def compare_maps(image: np.ndarray, text: np.ndarray, k: int, n_boot: int = 1000,
                 seed: int = 0) -> tuple[Estimate, float, Estimate, Estimate]:
    """Top-k Jaccard (with random-overlap p-value), expected random Jaccard, Spearman and
    per-example Jaccard of two per-example importance stacks ``[n, L, H]``."""
    n_ex, n_total = image.shape[0], image[0].size
    if not 1 <= k < n_total:
        raise ValueError(f"k must be in [1, {n_total - 1}], got {k}")
    both = np.concatenate([image.reshape(n_ex, -1), text.reshape(n_ex, -1)], axis=1)

    def jac(rows: np.ndarray) -> float:
        return jaccard(top_k_set(rows[:, :n_total].mean(0), k),
                       top_k_set(rows[:, n_total:].mean(0), k))

    def rho(rows: np.ndarray) -> float:
        return spearman(rows[:, :n_total].mean(0), rows[:, n_total:].mean(0))

    values, probs = random_jaccard(n_total, k)
    j = bootstrap_ci(both, jac, n_boot=n_boot, seed=seed)
    p = float(probs[values >= j.value - 1e-12].sum())
    j = Estimate(j.value, j.low, j.high, j.level, j.n, p)
    per = [jaccard(top_k_set(r[:n_total], k), top_k_set(r[n_total:], k)) for r in both]
    return (j, float((values * probs).sum()), bootstrap_ci(both, rho, n_boot=n_boot, seed=seed),
            bootstrap_ci(np.array(per), n_boot=n_boot, seed=seed))


def text_vs_image(
    model: HookedLVLM,
    image_inp: LVLMInput,
    text_inp: LVLMInput,
    descriptions: Sequence[str],
    config: TextVsImageConfig | None = None,
    *,
    reference_images: Sequence[Any] | None = None,
    progress: bool = True,
) -> TextVsImageResult:
    """Head attribution from the image and from the object's description, compared.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        image_inp: The objects shown (image prompts).
        text_inp: The same objects described in words (text-only prompts), same order.
        descriptions: Each object's description as it appears in its text prompt.
        config: Options (default :class:`TextVsImageConfig`).
        reference_images: Images for ``image_baseline="mean"``.
        progress: Show progress bars.
    """
    config = config or TextVsImageConfig()
    if len(image_inp) != len(text_inp):
        raise ValueError(f"{len(image_inp)} image examples but {len(text_inp)} text examples")
    text_inp = dataclasses.replace(
        text_inp, groups=text_inp.groups | {DESCRIPTION: span_group(model, text_inp,
                                                                    descriptions)})
    results = {}
    for name, inp, source, baseline in (
        ("image", image_inp, "image", config.image_baseline),
        ("text", text_inp, DESCRIPTION, config.text_baseline),
    ):
        ablation = dataclasses.replace(config.attribution.ablation, source=source,
                                       baseline=baseline)
        cfg = dataclasses.replace(config.attribution, ablation=ablation)
        refs = reference_images if source == "image" else None
        results[name] = head_attribution(model, inp, cfg, reference_images=refs,
                                         progress=progress)
    img = results["image"].importance.double().numpy()
    txt = results["text"].importance.double().numpy()
    j, rand, rho, per = compare_maps(img, txt, config.k, config.n_boot, config.seed)
    return TextVsImageResult(results["image"], results["text"], config.k, j, rand, rho, per)
