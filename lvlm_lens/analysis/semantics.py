"""Semantic content vs visual appearance: do images of the same class use the same heads?

Each example has an attribution vector (its head importances). Pairs of examples fall into
``same class`` (same class, different appearance), ``same appearance`` (same appearance,
different class) and ``different`` (neither). The paper's claim is that head usage follows the
class, not the look: similarity within a class beats similarity at equal appearance. Per
example, the mean similarity to its partners of each kind is averaged over examples with a
bootstrap CI, and the paired difference ``same class - same appearance`` gets a sign-flip
permutation p-value.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lvlm_lens.analysis.stats import Estimate, bootstrap_ci, rankdata, sign_flip_test
from lvlm_lens.viz.plots import new_figure, similarity_matrix

KINDS = ("same class", "same appearance", "different")
METHODS = ("cosine", "spearman")


def attribution_vectors(result: Any) -> np.ndarray:
    """Per-example head importance (``-coef``) of an
    :class:`~lvlm_lens.attribution.AttributionResult`, flattened to ``[n_examples, L*H]``."""
    imp = result.importance
    return imp.detach().double().cpu().numpy().reshape(len(imp), -1)


def similarity(vectors: Any, method: str = "cosine", center: bool = True) -> np.ndarray:
    """Example x example similarity of attribution vectors.

    Args:
        vectors: ``[n_examples, ...]`` (flattened per example).
        method: ``"cosine"`` or ``"spearman"`` (cosine of ranks, centred).
        center: Subtract the mean vector over examples first, so that the heads every example
            uses (the shared circuit) do not make every pair look alike.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    x = np.asarray(vectors.detach().cpu() if hasattr(vectors, "detach") else vectors, float)
    x = x.reshape(len(x), -1)
    if center:
        x = x - x.mean(0, keepdims=True)
    if method == "spearman":
        x = rankdata(x)
        x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1.0)
    return x @ x.T


def pair_kinds(classes: Sequence[Hashable], appearances: Sequence[Hashable]) -> np.ndarray:
    """``[n, n]`` kind of every pair (``""`` on the diagonal and for same class and
    appearance)."""
    c, a = np.asarray(classes, dtype=object), np.asarray(appearances, dtype=object)
    same_c, same_a = c[:, None] == c[None], a[:, None] == a[None]
    kinds = np.full(same_c.shape, "", dtype=object)
    kinds[same_c & ~same_a] = KINDS[0]
    kinds[~same_c & same_a] = KINDS[1]
    kinds[~same_c & ~same_a] = KINDS[2]
    return kinds


@dataclass
class SemanticsResult:
    """Similarity of head usage by class and by appearance.

    Attributes:
        similarity: ``[n, n]`` example x example similarity.
        classes: Class of each example.
        appearances: Appearance key of each example.
        method: ``cosine`` or ``spearman``.
        per_example: Per example, the mean similarity to its partners of each kind.
        kinds: Mean similarity per kind, with bootstrap CIs over examples.
        difference: ``same class - same appearance`` (paired per example), with its CI and
            the sign-flip permutation p-value of "greater than zero".
    """

    similarity: np.ndarray
    classes: list[Any]
    appearances: list[Any]
    method: str
    per_example: pd.DataFrame
    kinds: dict[str, Estimate]
    difference: Estimate

    def to_frame(self) -> pd.DataFrame:
        """One row per pair kind (and the difference): mean, CI, n, p-value."""
        rows = [{"kind": k, **e.as_dict()} for k, e in self.kinds.items()]
        rows.append({"kind": "same class - same appearance", **self.difference.as_dict()})
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        """The similarity matrix ordered by class, and by appearance."""
        fig, axes = new_figure(2, 1, (4.6, 4.0))
        for ax, key, other, name in ((axes[0, 0], self.classes, self.appearances, "class"),
                                     (axes[0, 1], self.appearances, self.classes, "appearance")):
            order = sorted(range(len(key)), key=lambda i: (str(key[i]), str(other[i])))
            m = self.similarity[np.ix_(order, order)]
            similarity_matrix(m, [key[i] for i in order], ax=ax,
                              title=f"{self.method} similarity, ordered by {name}")
        return fig


def semantic_similarity(
    vectors: Any,
    classes: Sequence[Hashable],
    appearances: Sequence[Hashable],
    *,
    method: str = "cosine",
    center: bool = True,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
) -> SemanticsResult:
    """Compare head usage within a class with head usage at equal appearance.

    Args:
        vectors: Per-example attribution vectors ``[n, ...]`` (e.g.
            :func:`attribution_vectors`), or an ``AttributionResult``.
        classes: Class of each example (the semantic content).
        appearances: Appearance of each example (any hashable, e.g. ``"red/large/noise"``).
            The design needs pairs of the same appearance across classes: render the same
            appearances for every class (see the semantics notebook).
        method: ``"cosine"`` or ``"spearman"``.
        center: Subtract the mean vector over examples before comparing.
        n_boot: Bootstrap resamples of the CIs.
        n_perm: Sign flips of the permutation test.
        seed: Seed of both.
    """
    if hasattr(vectors, "importance"):
        vectors = attribution_vectors(vectors)
    n = len(vectors)
    if len(classes) != n or len(appearances) != n:
        raise ValueError(f"need one class and one appearance per example ({n}), got "
                         f"{len(classes)} and {len(appearances)}")
    sim = similarity(vectors, method, center)
    kinds = pair_kinds(classes, appearances)
    rows = []
    for i in range(n):
        row = {"example": i, "class": classes[i], "appearance": appearances[i]}
        for k in KINDS:
            sel = kinds[i] == k
            row[k] = float(sim[i, sel].mean()) if sel.any() else np.nan
        rows.append(row)
    per = pd.DataFrame(rows)
    for k in KINDS[:2]:
        if per[k].isna().all():
            raise ValueError(f"no pair of kind {k!r}: the design needs examples that share a "
                             "class with another appearance and an appearance with another class")
    ests = {k: bootstrap_ci(per[k].dropna().to_numpy(), n_boot=n_boot, seed=seed)
            for k in KINDS}
    diff = (per[KINDS[0]] - per[KINDS[1]]).dropna().to_numpy()
    d = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    p = sign_flip_test(diff, n_perm=n_perm, seed=seed)
    d = Estimate(d.value, d.low, d.high, d.level, d.n, p)
    return SemanticsResult(sim, list(classes), list(appearances), method, per, ests, d)


def class_heads(vectors: Any, classes: Sequence[Hashable], k: int = 3,
                n_heads: int | None = None) -> dict[Hashable, list[Any]]:
    """Per class, the ``k`` heads most specific to it: largest mean importance within the class
    minus the mean over the other examples.

    Args:
        vectors: ``[n, L, H]`` or ``[n, L*H]`` importances (or an ``AttributionResult``).
        classes: Class of each example.
        k: Heads per class.
        n_heads: Heads per layer, to return ``(layer, head)`` pairs from flat vectors
            (inferred from ``[n, L, H]`` input or from an ``AttributionResult``).
    """
    if hasattr(vectors, "importance"):
        n_heads = vectors.coef.shape[-1]
        vectors = attribution_vectors(vectors)
    x = np.asarray(vectors.detach().cpu() if hasattr(vectors, "detach") else vectors, float)
    if x.ndim == 3:
        n_heads = x.shape[-1]
    x = x.reshape(len(x), -1)
    c = np.asarray(classes, dtype=object)
    out = {}
    for label in dict.fromkeys(classes):
        inside = c == label
        contrast = x[inside].mean(0) - (x[~inside].mean(0) if (~inside).any() else 0.0)
        top = np.argsort(-contrast, kind="stable")[:k].tolist()
        out[label] = [divmod(t, n_heads) for t in top] if n_heads else top
    return out
