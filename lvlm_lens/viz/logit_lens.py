"""Logit lens over the residual stream at image and text positions.

Each layer's residual stream (``blocks.{l}.hook_resid_post``, and the embeddings as layer -1)
is read through the final norm and the unembedding; restricted to candidate words (e.g. the
answer classes), it says which word each position "says" at each layer. Image positions are
shown on the patch grid, text positions as a strip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.viz.patches import draw_overlay, image_grids, model_view
from lvlm_lens.viz.plots import PALETTE, new_figure


@dataclass
class LogitLens:
    """Logit-lens readout of one example.

    Attributes:
        probs: ``[n_layers + 1, pos, n_candidates]`` probability of each candidate word
            (softmax over the whole vocabulary), row 0 = embeddings, row ``l + 1`` = after
            block ``l``.
        candidates: The candidate words.
        tokens: String token of every position.
        groups: Token-group name of every position (``image``, ``question``, ...).
        inp: The one-example input (for the patch layout).
        answer: The answer word, if known.
    """

    probs: Float[Tensor, "layer pos candidate"]
    candidates: list[str]
    tokens: list[str]
    groups: list[str]
    inp: LVLMInput
    answer: str | None = None

    def top_words(self) -> np.ndarray:
        """``[layer, pos]`` index of the most probable candidate."""
        return self.probs.argmax(-1).numpy()

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, position): token, group, top word, its probability and the
        answer's probability."""
        p = self.probs.numpy()
        top = p.argmax(-1)
        rows = []
        ans = self.candidates.index(self.answer) if self.answer in self.candidates else None
        for layer in range(p.shape[0]):
            for pos in range(p.shape[1]):
                word = self.candidates[top[layer, pos]]
                rows.append({"layer": layer - 1, "position": pos, "token": self.tokens[pos],
                             "group": self.groups[pos], "top_word": word,
                             "top_prob": float(p[layer, pos, top[layer, pos]]),
                             "answer_prob": float(p[layer, pos, ans]) if ans is not None
                             else np.nan})
        return pd.DataFrame(rows)

    def plot(self, layers: Sequence[int] | None = None, picture: Image.Image | None = None,
             max_text: int = 24) -> Figure:
        """Top candidate per image patch (one panel per layer) and per text token (a strip).

        Every patch grid of the image gets a row of panels: the base tile, and on
        any-resolution models (LLaVA-NeXT / OneVision) the high-res grid below it.

        Args:
            layers: Layers to show (default: every block's output); ``-1`` is the embeddings.
            picture: The example's image, drawn under the patch grids.
            max_text: Show at most this many text tokens (the last ones).
        """
        n = self.probs.shape[0] - 1
        layers = list(range(n)) if layers is None else list(layers)
        top = self.top_words()
        cmap = ListedColormap([PALETTE[i % len(PALETTE)] for i in range(len(self.candidates))])
        grids = image_grids(self.inp)
        fig, axes = new_figure(len(layers) + 1, len(grids), (2.3, 2.5))
        for row, grid in enumerate(grids):
            pic = None if picture is None else model_view(picture, grid)
            for ax, layer in zip(axes[row], layers, strict=False):
                vals = grid.fill(top[layer + 1].astype(float))
                draw_overlay(ax, pic, vals, cmap=cmap, vmin=-0.5,
                             vmax=len(self.candidates) - 0.5, alpha=0.55, scale_alpha=False)
                where = "" if len(grids) == 1 else f"{grid.kind}, "
                ax.set_title(where + ("embeddings" if layer < 0 else f"after layer {layer}"),
                             fontsize=8)
            if row:  # the text strip sits in the first row only
                axes[row, -1].set_axis_off()
        text = [i for i, g in enumerate(self.groups) if g not in ("image", "pad")][-max_text:]
        ax = axes[0, -1]
        strip = top[[layer + 1 for layer in layers]][:, text]
        ax.imshow(strip.T, cmap=cmap, vmin=-0.5, vmax=len(self.candidates) - 0.5, aspect="auto")
        ax.set_yticks(range(len(text)), [self.tokens[i] for i in text], fontsize=6)
        ax.set_xticks(range(len(layers)), [str(v) for v in layers], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title("text tokens", fontsize=8)
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color=cmap(i), label=w) for i, w in enumerate(self.candidates)],
                   loc="outside lower center", ncol=min(8, len(self.candidates)), fontsize=7)
        fig.suptitle("logit lens: most probable candidate word", fontsize=9)
        return fig


@torch.no_grad()
def logit_lens(
    model: HookedLVLM, inp: LVLMInput, candidates: Sequence[str], index: int = 0
) -> LogitLens:
    """Read every layer's residual stream through the final norm and the unembedding.

    Args:
        model: A :class:`~lvlm_lens.HookedLVLM`.
        inp: The input; example ``index`` is read.
        candidates: Words to compare (each one token), e.g. the answer classes.
        index: Which example.
    """
    ex = inp.select(index) if len(inp) > 1 else inp
    ids = torch.tensor([model.to_single_token(w) for w in candidates])
    names = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(ex, names_filter=names, return_cache_object=False)
    real = ex.attention_mask[0].bool().cpu()
    out = []
    for name in names:
        logits = model.unembed(model.ln_final(cache[name][0]))
        out.append(logits.float().log_softmax(-1)[:, ids.to(logits.device)].exp().cpu()[real])
    names_of = np.full(int(real.sum()), "text", dtype=object)
    for g in ("bos", "system", "role", "question", "image", "final"):
        if g in ex.groups:
            names_of[ex.groups[g][0].cpu()[real].numpy()] = g
    answer = None
    if ex.answer_ids is not None:
        answer = model.tokenizer.convert_ids_to_tokens(int(ex.answer_ids[0]))
    ex = ex.select(0)  # drop padding columns so positions match the tokens
    return LogitLens(torch.stack(out), list(candidates), model.to_str_tokens(ex),
                     list(names_of), ex, answer)
