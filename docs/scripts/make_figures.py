"""Draw the figures of the documentation into ``docs/images/``.

    python docs/scripts/make_figures.py            # the concept figures (seconds)
    python docs/scripts/make_figures.py --report   # also copy the figures of a `make demo` run

- ``token_groups.png``: one toy prompt, every token coloured by its token group (computed by
  ``model.prepare``, not drawn by hand), beside the image and its patch grid.
- ``head_ablation.png``: which (query, key) pairs of one head read baseline keys/values under
  scope ``text`` and ``all``, and the prefix the engine runs once.
- ``report_*.png`` (``--report``): the importance heatmap, curves and an example of the report
  of ``lvlm-lens attribute`` with its defaults on the bundled toy (what ``make demo`` runs).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Patch, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "images"
sys.path.insert(0, str(ROOT))

from lvlm_lens import load_toy, synthetic_records  # noqa: E402

#: Colour of each token group in every figure of the docs.
GROUP_COLOURS = {
    "bos": "#9e9e9e",
    "system": "#8d6e63",
    "role": "#ffb74d",
    "image": "#4fc3f7",
    "question": "#81c784",
    "final": "#e57373",
}


def token_group(inp, j: int) -> str:
    """The group a position is drawn in (groups are disjoint; ``final`` wins on a prompt that
    ends with an image token, the one overlap)."""
    for name in ("final", "image", "question", "system", "bos", "role"):
        if bool(inp.groups[name][0, j]):
            return name
    return "text"


def token_groups_figure(path: Path) -> None:
    """One prompt of the toy, each token coloured by group, with the image and its patches."""
    model = load_toy(device="cpu")
    rec = synthetic_records(1, seed=0)[0]
    inp = model.prepare(rec.image, rec.prompt, answers=rec.answer)
    tokens = model.to_str_tokens(inp)
    fig = plt.figure(figsize=(11, 4.2), dpi=130)
    ax_img = fig.add_axes([0.01, 0.22, 0.2, 0.7])
    ax_img.imshow(np.asarray(rec.image), extent=(0, 6, 6, 0), interpolation="nearest")
    for i in range(7):
        ax_img.axhline(i, color="w", lw=0.8)
        ax_img.axvline(i, color="w", lw=0.8)
    for r in range(6):
        for c in range(6):
            ax_img.text(c + 0.5, r + 0.5, f"{r},{c}", ha="center", va="center", fontsize=6.5,
                        color="k", alpha=0.7)
    ax_img.set_axis_off()
    ax_img.set_title("the image: 6x6 patches\n= 36 image tokens", fontsize=9)

    ax = fig.add_axes([0.23, 0.05, 0.76, 0.9])
    ax.set_axis_off()
    per_row, w, h = 14, 1.0, 0.8
    rows = -(-len(tokens) // per_row)
    ax.set_xlim(-0.1, per_row * w + 0.1)
    ax.set_ylim(rows * 1.1 + 0.2, -0.4)
    for j, tok in enumerate(tokens):
        r, c = divmod(j, per_row)
        group = token_group(inp, j)
        also_role = group != "role" and bool(inp.groups["role"][0, j])
        ax.add_patch(FancyBboxPatch((c * w + 0.07, r * 1.1 + 0.03), w - 0.14, h - 0.06,
                                    boxstyle="round,pad=0,rounding_size=0.12",
                                    fc=GROUP_COLOURS[group],
                                    ec=GROUP_COLOURS["role"] if also_role else "none",
                                    lw=3 if also_role else 0))
        label = tok.replace("<img ", "").replace(">", "") if group == "image" else tok
        label = "\\n" if label == "\n" else label
        ax.text(c * w + w / 2, r * 1.1 + h / 2, label, ha="center", va="center",
                fontsize=7.5 if len(label) < 7 else 6.2)
        ax.text(c * w + w / 2, r * 1.1 + h + 0.13, str(j), ha="center", va="center",
                fontsize=5.5, color="0.45")
    ax.set_title(f"{len(tokens)} tokens of one toy prompt (answer: {rec.answer!r}), coloured by "
                 "token group; small numbers: positions", fontsize=9.5, loc="left")
    handles = [Patch(color=c, label=g) for g, c in GROUP_COLOURS.items()
               if g != "final" and bool(inp.groups[g][0].any())]
    both = bool((inp.groups["final"][0] & inp.groups["role"][0]).any())
    handles.append(Patch(fc=GROUP_COLOURS["final"], ec=GROUP_COLOURS["role"] if both else "none",
                         lw=2, label="final (orange edge: also in role)" if both else "final"))
    fig.legend(handles=handles, loc="lower left", ncol=2, fontsize=8.5, frameon=False,
               bbox_to_anchor=(0.01, 0.0))
    fig.savefig(path)
    plt.close(fig)


def _segments(ax, y, h, spans, label_y=None):
    for start, end, group, label in spans:
        ax.add_patch(Rectangle((start, y), end - start, h, fc=GROUP_COLOURS[group], ec="w"))
        ax.text((start + end) / 2, y + h / 2 if label_y is None else label_y, label,
                ha="center", va="center", fontsize=8)


def head_ablation_figure(path: Path) -> None:
    """Query x key grid of one ablated head under scope text and all."""
    # a schematic prompt: 3 prefix text tokens, 8 image tokens, 6 text tokens after them
    n_pre, n_img, n_txt = 3, 8, 6
    n = n_pre + n_img + n_txt
    img = slice(n_pre, n_pre + n_img)
    spans = [(0, n_pre, "role", "USER :"), (n_pre, n_pre + n_img, "image", "image tokens"),
             (n_pre + n_img, n - 1, "question", "text after the image"), (n - 1, n, "final", "")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), dpi=130)
    for ax, scope in zip(axes, ("text", "all"), strict=True):
        grid = np.zeros((n, n))  # 0 future, 1 clean, 2 baseline
        for q in range(n):
            grid[q, : q + 1] = 1
            in_scope = scope == "all" or q >= img.stop
            if in_scope:
                for k in range(img.start, min(img.stop, q + 1)):
                    grid[q, k] = 2
        cmap = matplotlib.colors.ListedColormap(["#ffffff", "#dfe6ee", "#e53935"])
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, extent=(0, n, n, 0))
        for i in range(n + 1):
            ax.axhline(i, color="w", lw=0.6)
            ax.axvline(i, color="w", lw=0.6)
        _segments(ax, -1.3, 1.0, spans)
        for start, end, group, _ in spans:
            ax.add_patch(Rectangle((-1.3, start), 1.0, end - start,
                                   fc=GROUP_COLOURS[group], ec="w", clip_on=False))
        ax.set_xlim(-1.4, n)
        ax.set_ylim(n, -1.4)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_xlabel("keys / values (earlier tokens)")
        ax.set_ylabel("queries")
        if scope == "text":
            ax.add_patch(Rectangle((0, 0), img.stop, img.stop, fill=False, ec="k", lw=1.6,
                                   ls="--"))
            ax.text(img.stop + 0.3, img.stop - 0.5, "prefix: the same under every mask,\n"
                    "run once per example by the engine", fontsize=8, va="bottom")
        ax.set_title(f'HeadAblation(scope="{scope}")' + (" (default)" if scope == "text" else ""),
                     fontsize=10)
    handles = [Patch(color="#e53935", label="reads the baseline K/V when this head is ablated"),
               Patch(color="#dfe6ee", label="reads the clean K/V (as without ablation)"),
               Patch(fc="w", ec="0.6", label="masked (causal)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8.5, frameon=False)
    fig.suptitle("Ablating head (l, h): its queries in scope read baseline keys/values at the "
                 "image positions; every other head, and every other position, stays clean",
                 fontsize=10)
    fig.subplots_adjust(bottom=0.1, top=0.88, wspace=0.25)
    fig.savefig(path)
    plt.close(fig)


def report_figures(out: Path) -> None:
    """Run `lvlm-lens attribute` with its defaults (what `make demo` runs); copy its figures."""
    from lvlm_lens.run.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        if main(["attribute", "--out", tmp, "--device", "cpu"]) != 0:
            raise SystemExit("lvlm-lens attribute failed")
        figures = Path(tmp) / "figures"
        for name, dest in (("importance", "report_importance"), ("curves", "report_curves"),
                           ("example_0", "report_example")):
            shutil.copy(figures / f"{name}.png", out / f"{dest}.png")


def main() -> None:
    """Draw the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="also copy a demo run's figures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    token_groups_figure(OUT / "token_groups.png")
    head_ablation_figure(OUT / "head_ablation.png")
    if args.report:
        report_figures(OUT)
    print(f"figures written to {OUT}")


if __name__ == "__main__":
    main()
