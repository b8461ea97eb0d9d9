"""Patching and knockout sweeps that reuse the prefix, against one full forward per entry.

One random LLaVA-1.5-shaped model (CLIP 2 x 256 giving 576 image tokens; a Llama decoder of
``--layers`` x ``--d-model``, fp32, eval) and one prompt of 5 text + 576 image + 26 text tokens,
timed side by side in one process (:func:`benchmarks.common.time_interleaved`):

1. Residual-stream patching over every text position (31) and every layer, clean and
   corrupted inputs differing in the image: ``patch_sweep(..., "resid_pre",
   single_positions(inp, "text"))`` against ``transformer_lens.patching``'s
   ``generic_activation_patch`` with ``layer_pos_patch_setter`` on ``resid_pre`` (what
   ``get_act_patch_resid_pre`` runs), one full hooked forward per (layer, position). The TL
   sweep is timed on ``--tl-entries`` of its entries per round (every entry costs one forward of
   the same input, so its full time is that per-entry time x the number of entries).
2. Attention-knockout window sweeps (``--window`` layers, centred on every layer) for the
   edges image -> final and image -> question: ``knockout_window_sweep`` against one full
   forward per window (``run_with_hooks`` with ``knockout_hooks``).

Both are checked for equality with their baseline. Results: ``docs/benchmarks.md``.
Run: ``python benchmarks/sweeps.py --threads 1`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from transformer_lens import patching as tl_patching

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    OtherLoad,
    build_random_llava,
    clock_of,
    llava15_prompt,
    machine_info,
    model_arguments,
    paired_ratio,
    random_images,
    time_interleaved,
)
from lvlm_lens import HookedLVLM  # noqa: E402
from lvlm_lens.interventions.knockout import knockout_hooks, window_layers  # noqa: E402
from lvlm_lens.interventions.metrics import answer_logit  # noqa: E402
from lvlm_lens.interventions.sweeps import (  # noqa: E402
    knockout_window_sweep,
    patch_sweep,
    single_positions,
)

TARGET_PATCH = 10.0
TARGET_KNOCKOUT = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_arguments(parser)
    parser.add_argument("--window", type=int, default=3, help="layers per knockout window")
    parser.add_argument("--tl-entries", type=int, default=4, help="TL entries timed per round")
    parser.add_argument("--batch", type=int, default=64, help="patches per forward (ours)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU seconds (steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    d_mlp = args.d_mlp or int(2.75 * args.d_model)
    hf, tok, ip = build_random_llava(n_layers=args.layers, d_model=args.d_model,
                                     n_heads=args.heads, d_mlp=d_mlp)
    model = HookedLVLM.from_hf(hf, tokenizer=tok, image_processor=ip)
    clean = model.prepare(random_images(1, seed=0), llava15_prompt())
    corrupted = model.prepare(random_images(1, seed=3), llava15_prompt())
    answer = int(model(clean)[0, -1].argmax())
    clean.answer_ids = corrupted.answer_ids = torch.tensor([answer])
    metric = lambda logits: answer_logit(logits[:, -1], clean.answer_ids).mean()  # noqa: E731
    groups = single_positions(clean, "text")
    cols = [int(c) for c in groups]
    entries = [(layer, c) for layer in range(args.layers) for c in cols]
    step = max(1, len(entries) // args.tl_entries)
    subset = pd.DataFrame(entries[::step][: args.tl_entries], columns=["layer", "pos"])
    _, clean_cache = model.run_with_cache(clean)
    n = args.layers
    args.window = min(args.window, n)
    windows = [window_layers(c, args.window, n) for c in range(n)]

    def ours_patch():
        return patch_sweep(model, clean, corrupted, metric, "resid_pre", groups,
                           batch_size=args.batch, progress=False)

    @torch.no_grad()
    def tl_patch():
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # its tqdm bar
            return tl_patching.generic_activation_patch(
                model, corrupted, clean_cache, metric, tl_patching.layer_pos_patch_setter,
                "resid_pre", index_df=subset)

    def ours_knockout(target):
        return lambda: knockout_window_sweep(model, clean, "image", target, args.window,
                                             metric="logit", progress=False)

    def full_knockout(target):
        @torch.no_grad()
        def run():
            return [model.run_with_hooks(clean, fwd_hooks=knockout_hooks(
                model, clean, "image", target, w))[:, -1] for w in windows]
        return run

    # correctness, once
    sweep = ours_patch()
    tl = tl_patch()
    ours_sub = torch.stack([sweep.values[r.layer, cols.index(r.pos)] for r in subset.itertuples()])
    d_patch = float((ours_sub - tl).abs().max())
    d_ko = 0.0
    for target in ("final", "question"):
        new = torch.stack(full_knockout(target)())
        with torch.no_grad():
            clean_logit = model(clean)[:, -1, answer]
        ref = new[:, 0, answer] - clean_logit
        d_ko = max(d_ko, float((ours_knockout(target)()[:, 0] - ref).abs().max()))

    fns = {
        "patch sweep (ours)": ours_patch,
        "patch sweep (TL, subset)": tl_patch,
        "knockout image->final (ours)": ours_knockout("final"),
        "knockout image->final (full fwd / window)": full_knockout("final"),
        "knockout image->question (ours)": ours_knockout("question"),
        "knockout image->question (full fwd / window)": full_knockout("question"),
    }
    samples: dict[str, list[float]] = {}
    with OtherLoad() as load:
        med = time_interleaved(fns, args.repeats, warmup=1, samples=samples,
                               clock=clock_of(args.clock))
    scale = len(entries) / len(subset)
    tl_full = [t * scale for t in samples["patch sweep (TL, subset)"]]
    samples["patch sweep (TL, all entries, extrapolated)"] = tl_full
    patch_ratio = paired_ratio(samples, "patch sweep (TL, all entries, extrapolated)",
                               "patch sweep (ours)")
    ko = {t: paired_ratio(samples, f"knockout image->{t} (full fwd / window)",
                          f"knockout image->{t} (ours)") for t in ("final", "question")}

    print(machine_info())
    print(f"model: {n} layers, d_model {args.d_model}, {args.heads} heads, fp32; prompt "
          f"{clean.shape[1]} tokens (5 text + 576 image + 26 text); {len(cols)} text positions x "
          f"{n} layers = {len(entries)} patch entries ({sweep.skipped} unchanged, not run); "
          f"knockout windows of {args.window} layers x {n} centres\n")
    print("| call | median s | min s |")
    print("|---|---|---|")
    for name in fns:
        print(f"| {name} | {med[name]:.2f} | {min(samples[name]):.2f} |")
    print(f"| patch sweep (TL, all entries, extrapolated x{scale:.0f}) | "
          f"{sorted(tl_full)[len(tl_full) // 2]:.1f} | {min(tl_full):.1f} |")
    print()
    verdict = lambda ok: "PASS" if ok else "MISS"  # noqa: E731
    print(f"- resid_pre sweep over all text positions, TL / ours: {patch_ratio:.1f}x "
          f"(target >= {TARGET_PATCH:.0f}x) {verdict(patch_ratio >= TARGET_PATCH)}; "
          f"max |ours - TL| on the timed entries {d_patch:.1e}")
    for t, r in ko.items():
        print(f"- knockout window sweep image->{t}, one full forward per window / ours: {r:.1f}x "
              f"(target >= {TARGET_KNOCKOUT:.0f}x) {verdict(r >= TARGET_KNOCKOUT)}")
    print(f"- max |ours - full forward| knockout logit change {d_ko:.1e}")
    spread = max(samples["patch sweep (ours)"]) / min(samples["patch sweep (ours)"])
    others = "n/a" if load.share is None else f"{load.share:.0%}"
    print(f"- {args.clock} clock; {args.repeats} interleaved rounds (+1 warm-up), ratios are "
          f"medians of within-round "
          f"ratios; slowest/fastest ours-patch round {spread:.2f}; other processes used "
          f"{others} of the CPUs meanwhile; total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
