"""Token-level information flow: attention knockout of group -> group edges in sliding layer
windows (Geva et al.; Zhang et al., "Cross-modal information flow in multimodal LLMs").

For each edge ``source -> target`` (e.g. ``image -> final``: final-token queries may not
attend to image keys) and each window of layers centred on every layer, the answer
probability is measured with the edge cut; the effect is its relative change
``(p_knocked - p_clean) / p_clean``. A drop early in the network that vanishes later says the
information has moved on by then. The knockout may be restricted to chosen heads, e.g. the
top-k of a head attribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor

from lvlm_lens.analysis.stats import ci_table
from lvlm_lens.interventions.engine import clean_answers
from lvlm_lens.interventions.knockout import knockout_hooks, window_layers
from lvlm_lens.interventions.metrics import answer_prob, final_logits
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.progress import progress_bar, show_progress
from lvlm_lens.viz.plots import line_plot

#: The edges of Zhang et al. between the prompt's token groups (source -> target).
DEFAULT_EDGES: tuple[tuple[str, str], ...] = (
    ("image", "question"),
    ("image", "role"),
    ("image", "final"),
    ("question", "role"),
    ("question", "final"),
    ("role", "final"),
)


def default_window(n_layers: int) -> int:
    """Window size scaled to depth: 9 of 32 layers as in Zhang et al. (at least 1)."""
    return max(1, round(9 * n_layers / 32))


@dataclass
class FlowConfig:
    """Options of :func:`token_flow`.

    Attributes:
        edges: ``(source, target)`` token-group names; names come from the input's groups or
            from the ``groups`` passed to :func:`token_flow` (e.g. ``object`` / ``background``).
        window: Layers per window (default :func:`default_window`); windows are centred on
            every layer and clipped at the ends.
        heads: Knock the edges out only in these ``(layer, head)`` query heads (default: all).
        progress: Show a progress bar.
    """

    edges: Sequence[tuple[str, str]] = DEFAULT_EDGES
    window: int | None = None
    heads: Sequence[tuple[int, int]] | None = None
    progress: bool = True


@dataclass
class FlowResult:
    """Knockout effects, one row per edge x window x example.

    Attributes:
        frame: Columns ``edge``, ``source``, ``target``, ``layer`` (window centre),
            ``first`` / ``last`` (window ends), ``example``, ``p_clean``, ``p_new``,
            ``change`` (relative change of the answer probability) and ``heads`` (number of
            query heads knocked out in the window).
        window: The window size used.
        summary_seed: Seed of the bootstrap intervals of :meth:`summary`.
    """

    frame: pd.DataFrame
    window: int
    summary_seed: int = field(default=0, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """The tidy table (one row per edge x window x example)."""
        return self.frame

    def summary(self) -> pd.DataFrame:
        """Mean relative change per edge and window centre, with a bootstrap 95 % CI over
        examples (``mean``, ``low``, ``high``, ``n``)."""
        return ci_table(self.frame, ["edge", "layer"], "change", seed=self.summary_seed)

    def strongest(self) -> pd.DataFrame:
        """Per edge, the window with the largest mean drop (most negative change)."""
        s = self.summary()
        return s.loc[s.groupby("edge", sort=False)["mean"].idxmin()].reset_index(drop=True)

    def plot(self, title: str | None = None, panels: bool = True) -> Any:
        """The mean relative change over the window centre, one panel (or one line) per edge,
        with 95 % CI bands over examples."""
        return line_plot(self.summary(), "layer", hue=None if panels else "edge",
                         panels="edge" if panels else None, xlabel="window centre (layer)",
                         ylabel="relative change of p(answer)",
                         title=title or f"attention knockout, windows of {self.window} layer"
                         + ("s" if self.window > 1 else ""))


def _masks(inp: LVLMInput, groups: dict[str, Tensor] | None) -> dict[str, Bool[Tensor, "b p"]]:
    out = {k: v.bool() for k, v in inp.groups.items()}
    for name, mask in (groups or {}).items():
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(inp.shape):
            raise ValueError(f"group {name!r} must be a bool mask of shape {tuple(inp.shape)}")
        out[name] = mask
    return out


def window_hooks(model: HookedLVLM, inp: LVLMInput, source: Tensor, target: Tensor,
                 layers: list[int], heads: Sequence[tuple[int, int]] | None
                 ) -> tuple[list[tuple[str, Any]], int]:
    """Knockout hooks for one window, restricted to ``heads`` if given; also the number of
    (layer, query head) pairs cut."""
    if heads is None:
        return knockout_hooks(model, inp, source, target, layers), len(layers) * model.cfg.n_heads
    hooks, n = [], 0
    for layer in layers:
        chosen = sorted({h for l_, h in heads if l_ == layer})
        if chosen:
            hooks += knockout_hooks(model, inp, source, target, [layer], chosen)
            n += len(chosen)
    return hooks, n


@torch.no_grad()
def token_flow(
    model: HookedLVLM,
    inp: LVLMInput,
    config: FlowConfig | None = None,
    *,
    groups: dict[str, Bool[Tensor, "batch pos"]] | None = None,
) -> FlowResult:
    """Knock out every edge in every window and measure the answer probability.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        inp: The examples (answer = ``inp.answer_ids`` or the model's own clean answer).
        config: Edges, window size, heads (default :class:`FlowConfig`).
        groups: Extra token groups by name (e.g. from
            :func:`~lvlm_lens.analysis.regions.image_regions`).

    Returns:
        The effects, one row per edge x window x example.
    """
    config = config or FlowConfig()
    n_layers = model.cfg.n_layers
    size = config.window or default_window(n_layers)
    masks = _masks(inp, groups)
    for src, tgt in config.edges:
        for name in (src, tgt):
            if name not in masks:
                raise KeyError(f"edge {src}->{tgt}: unknown token group {name!r}; known: "
                               f"{sorted(masks)} (pass extra ones with groups=)")
    answers = clean_answers(model, inp)
    p_clean = answer_prob(final_logits(model(inp)), answers).cpu()
    rows = []
    total = len(config.edges) * n_layers
    with show_progress(config.progress), progress_bar(total=total, desc="knockout windows") as bar:
        for src, tgt in config.edges:
            for centre in range(n_layers):
                layers = window_layers(centre, size, n_layers)
                hooks, n_cut = window_hooks(model, inp, masks[src], masks[tgt], layers,
                                            config.heads)
                if hooks:
                    logits = final_logits(model.run_with_hooks(inp, fwd_hooks=hooks))
                    p_new = answer_prob(logits, answers).cpu()
                else:
                    p_new = p_clean
                for i in range(len(inp)):
                    rows.append({"edge": f"{src}\u2192{tgt}", "source": src, "target": tgt,
                                 "layer": centre, "first": layers[0], "last": layers[-1],
                                 "example": i, "p_clean": float(p_clean[i]),
                                 "p_new": float(p_new[i]),
                                 "change": float((p_new[i] - p_clean[i]) / p_clean[i]),
                                 "heads": n_cut})
                bar.update(1)
    return FlowResult(pd.DataFrame(rows), size)
