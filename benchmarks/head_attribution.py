"""Head attribution: the fast masked-run engine against the reference path.

Builds one random LLaVA-1.5-shaped model in memory (a tiny CLIP tower giving 576 image
tokens, a Llama decoder of ``--layers`` x ``--d-model``; fp32, eval, eager attention) and one
prompt of 5 text tokens + 576 image tokens + 26 text tokens. Head ablation uses the default
scope ``text`` and a ``zero`` (or ``mean``) baseline; masks ablate each head with probability
``--rate``. Under ``torch.no_grad()`` and torch's default thread count it measures, in one
process:

1. Masks per second of ``AblationEngine.run_batch`` (``--batch`` masks per call, the prefix
   cache already built) against ``run_reference`` (one hooked full-sequence forward per mask,
   timed on ``--ref-masks`` masks) and a plain unhooked full forward ``model(inp)`` (what one
   mask would cost without the hooks' extra work), interleaved (see
   :func:`benchmarks.common.time_interleaved`).
   The speed-up is printed beside the token bound ``(prefix + suffix) / suffix``, what skipping
   the shared prefix saves if every token cost the same, and a FLOP-count bound that also
   counts attention (whose cost grows with the position).
2. The engine's time per mask against a plain forward of the same suffix batch against the
   same cached prefix (a ``KVCache`` without alternative keys/values, no switch): the price of
   the per-(mask, layer, head) choice between clean and baseline image K/V.
3. Time per mask at 144 / 576 / 2304 image tokens (CLIP image 168 / 336 / 672 px, patch 14;
   ``--scaling-batch`` masks per call), engine and plain suffix: only the suffix's attention
   over the prefix grows with it, not its MLP/projections. Also the kernel CPU time per mask
   (page faults: glibc serves every allocation over 32 MB with a fresh ``mmap``).
4. Memory: the peak of tensor memory allocated during one call (torch profiler, CPU memory
   events), for the engine (first call of a fresh engine, which builds the prefix cache, and
   a later call) and for the plain suffix run, at two batch sizes: the per-mask slope and the
   intercept show memory is O(prefix + batch x suffix). The prefix cache's size is printed too.

PASS/MISS uses medians of within-round ratios; the fastest round's are printed beside them.
``--threads 1`` gives steady numbers on a machine shared with other jobs (two intra-op threads
stall each other when a core is taken); ``--keep-freed-memory`` shows the cost of the kernel's
page faults on large temporaries (see :func:`keep_freed_memory`).

``--preset llava-7b`` measures throughput at LLaVA-1.5-7B shape in bf16 instead (masks/s,
memory per mask, share of the FLOP limit; ``--reduce 8`` to run it on a CPU): see
:mod:`benchmarks.throughput`.

``--family qwen3.5`` / ``qwen3.5-moe`` runs 1, 2 and 4 on that family's random model
(:func:`benchmarks.common.build_random_family`: Gated-DeltaNet layers, whose prefix cache is a
recurrent state and conv tail per baseline side). ``--family mllama`` (Llama 3.2 Vision:
the image is one ``<|image|>`` token, the 2308-state image side is read by the cross-attention
layers) runs them too: there the engine's gain is less the shared text prefix (a few tokens)
than the vision tower and the cross layers' image K/V, run once per example instead of once
per mask by the reference.

Run: ``python benchmarks/head_attribution.py [--threads 1]`` (about 3 minutes on 2 CPU cores;
up to 7 with two threads while other jobs hold the cores). Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    OtherLoad,
    build_random_family,
    build_random_llava,
    clock_of,
    keep_freed_memory,
    llava15_prompt,
    machine_info,
    model_arguments,
    paired_ratio,
    random_images,
    time_interleaved,
)
from lvlm_lens import HookedLVLM  # noqa: E402
from lvlm_lens.attribution.regression import sample_masks  # noqa: E402
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline  # noqa: E402
from lvlm_lens.interventions.engine import AblationEngine, run_reference  # noqa: E402

TARGET_SPEEDUP = 15.0  # reference s/mask over engine s/mask, at least
TARGET_VS_PLAIN = 1.2  # engine s/mask over plain cached-suffix s/mask, at most
TARGET_GROWTH = 1.5  # engine s/mask at 2304 image tokens over 144, at most
TARGET_MEM_SLOPE = 1.5  # engine per-mask memory slope over the plain run's, at most
PATCH = 14
IMAGE_SIZES = (168, 336, 672)  # 144, 576, 2304 image tokens
MB = 2**20


def build(args: argparse.Namespace, image_size: int) -> tuple[Any, Any]:
    """The random model with ``(image_size / 14)^2`` image tokens and the prompt's input (with
    ``--family``: that family's random model and its 576-token image, ``image_size`` unused)."""
    if args.family != "llava":
        sizes = dict(n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
                     d_mlp=args.d_mlp)
        hf, tokenizer, processor, side = build_random_family(args.family, **sizes)
        model = HookedLVLM.from_hf(hf, tokenizer=tokenizer, image_processor=processor)
        return model, model.prepare(random_images(1, size=side), llava15_prompt())
    hf, tokenizer, image_processor = build_random_llava(
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        d_mlp=args.d_mlp,
        image_size=image_size,
        patch_size=PATCH,
    )
    model = HookedLVLM.from_hf(hf, tokenizer=tokenizer, image_processor=image_processor)
    return model, model.prepare(random_images(1, size=image_size), llava15_prompt())


def baseline_of(model: Any, inp: Any, config: HeadAblation, image_size: int) -> Any:
    refs = random_images(2, size=image_size, seed=1) if config.baseline == "mean" else None
    return compute_baseline(model, inp, config, reference_images=refs)


def image_tokens(model: Any, inp: Any) -> str:
    """What the prefix holds: text and image tokens, or (cross-attention layers) text and the
    image token, with the image side the cross layers read beside it."""
    cross = model.layout(inp).cross
    if cross is None:
        return f"text + {int(inp.groups['image'].sum())} image"
    side = cross.states.shape[1]
    return f"text + the image token; an image side of {side} states read by cross-attention"


def plain_suffix(model: Any, engine: AblationEngine, batch: int) -> Callable[[], torch.Tensor]:
    """A plain forward of the engine's suffix, ``batch`` rows against its cached prefix (clean
    keys/values only, no switch, the engine's layout: cross-attention layers read the image
    side), unembedding the final position."""
    st = engine._example(0)
    cache = replace(st.cache, alt_keys=None, alt_values=None, alt_states=None)
    x, mask = st.x.expand(batch, -1, -1), st.mask.expand(batch, -1)
    layout = st.layout.expand(batch)

    @torch.no_grad()
    def run() -> torch.Tensor:
        resid, _ = model.run_blocks(x, mask, cache, layout=layout)
        return model.unembed(model.ln_final(resid[:, -1]))

    return run


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the net CPU tensor memory allocated during ``fn()`` (its output included).

    The profiler attributes each allocation to the op that made it (``self`` memory) and
    reports frees outside ops as ``[memory]`` events; their running sum in time order gives
    the peak (allocations and frees inside one op net out, so this is a slight underestimate).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    deltas = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    total = peak = 0
    for _, delta in deltas:
        total += delta
        peak = max(peak, total)
    return peak


def with_sys_time(
    name: str, fn: Callable[[], Any], into: dict[str, list[float]]
) -> Callable[[], Any]:
    """``fn``, recording the kernel CPU seconds of each call in ``into[name]``."""

    def run() -> Any:
        start = os.times().system
        out = fn()
        into.setdefault(name, []).append(os.times().system - start)
        return out

    return run


def flops_per_layer(first: int, last: int, d: int, d_mlp: int) -> float:
    """Multiply-adds x 2 of one Llama layer for the tokens at positions ``first .. last - 1``
    (each attending to every earlier position): projections, MLP, scores and values."""
    n = last - first
    keys = (first + 1 + last) * n / 2  # sum of (position + 1)
    return 2 * n * (4 * d * d + 3 * d * d_mlp) + 4 * d * keys


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def best_ratio(samples: dict[str, list[float]], name: str, base: str) -> float:
    """``min(samples[name]) / min(samples[base])``: the ratio of the best rounds."""
    return min(samples[name]) / min(samples[base])


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    w = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for k, r in enumerate([header, *rows]):
        print("| " + " | ".join(c.ljust(wi) for c, wi in zip(r, w, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (wi + 2) for wi in w) + "|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="llava", choices=["llava", "qwen3.5", "qwen3.5-moe",
                                                           "mllama"],
                        help="another family's random model (benchmarks.common."
                             "build_random_family; 1, 2 and 4 only)")
    model_arguments(parser)
    parser.add_argument("--batch", type=int, default=32, help="masks per engine call")
    parser.add_argument("--rate", type=float, default=0.05, help="ablation rate per head")
    parser.add_argument("--baseline", choices=("zero", "mean"), default="zero")
    parser.add_argument("--ref-masks", type=int, default=1, help="masks per reference call")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (+1 warm-up)")
    parser.add_argument("--scaling-repeats", type=int, default=4)
    parser.add_argument("--scaling-batch", type=int, default=16, help="masks per call in 3.")
    parser.add_argument("--mem-batches", type=int, nargs=2, default=(16, 64))
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU seconds (steadier on a shared machine)")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc: no fresh mmap per large tensor, keep freed memory (see keep_freed_memory)",
    )
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    from benchmarks.throughput import add_arguments, run_preset

    add_arguments(parser)
    args = parser.parse_args()
    if args.preset:
        if args.threads:
            torch.set_num_threads(args.threads)
        return run_preset(args)
    args.d_mlp = args.d_mlp or int(2.75 * args.d_model)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "glibc default"
    if args.keep_freed_memory:
        malloc = "glibc keeping freed memory" if keep_freed_memory() else "mallopt failed"
    B, L, H = args.batch, args.layers, args.heads
    config = HeadAblation(baseline=args.baseline)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    rows: list[tuple[str, ...]] = []  # measure, median, best round, target, result
    notes: list[str] = []

    # 1 + 2: engine vs reference vs plain suffix, 576 image tokens ---------------------------
    model, inp = build(args, 336)
    baseline = baseline_of(model, inp, config, 336)
    masks = sample_masks(B, L, H, args.rate, seed=0)
    ref_masks = masks[: args.ref_masks]
    engine = AblationEngine(model, inp, baseline, config, batch_size=B)
    t0 = time.perf_counter()
    st = engine._example(0)  # the shared prefix: run once per example
    t_prefix = time.perf_counter() - t0
    n_prefix, n_suffix = st.cache.length, st.x.shape[1]
    n_total = n_prefix + n_suffix
    fast = engine.run_batch(0, masks)
    ref = run_reference(model, inp, ref_masks, baseline, config, progress=False)[0]
    max_diff = (fast[: args.ref_masks] - ref).abs().max().item()
    per_call = {"engine": B, "plain": B, "reference": args.ref_masks, "full": 1}
    fns = {
        "engine": lambda: engine.run_batch(0, masks),
        "plain": plain_suffix(model, engine, B),
        "reference": lambda: run_reference(model, inp, ref_masks, baseline, config, progress=False),
        "full": torch.no_grad()(lambda: model(inp)),
    }
    samples: dict[str, list[float]] = {}
    with OtherLoad() as load:
        med = time_interleaved(fns, args.repeats, warmup=1, samples=samples,
                               clock=clock_of(args.clock))
    labels = {
        "engine": f"engine run_batch (B={B}), ms/mask",
        "plain": f"plain cached suffix (B={B}), ms/mask",
        "reference": "reference (hooked full fwd), ms/mask",
        "full": "plain full forward (no hooks), ms/mask",
    }
    for name, label in labels.items():
        n = per_call[name]
        rows.append((label, f"{med[name] / n * 1e3:.1f}", f"{min(samples[name]) / n * 1e3:.1f}"))
    token_bound = n_total / n_suffix
    flop_bound = flops_per_layer(0, n_total, args.d_model, args.d_mlp) / flops_per_layer(
        n_prefix, n_total, args.d_model, args.d_mlp
    )
    speedup = paired_ratio(samples, "reference", "engine") * B / args.ref_masks
    rows.append(
        (
            "speed-up reference / engine, per mask",
            f"{speedup:.1f}x",
            f"{best_ratio(samples, 'reference', 'engine') * B / args.ref_masks:.1f}x",
            f">= {TARGET_SPEEDUP:.0f}x (bound: tokens {token_bound:.1f}x, FLOPs {flop_bound:.1f}x)",
            verdict(speedup >= TARGET_SPEEDUP),
        )
    )
    rows.append(
        (
            "speed-up full forward / engine",
            f"{paired_ratio(samples, 'full', 'engine') * B:.1f}x",
            f"{best_ratio(samples, 'full', 'engine') * B:.1f}x",
        )
    )
    vs_plain = paired_ratio(samples, "engine", "plain")
    rows.append(
        (
            "engine / plain cached suffix",
            f"{vs_plain:.3f}x",
            f"{best_ratio(samples, 'engine', 'plain'):.3f}x",
            f"<= {TARGET_VS_PLAIN}x",
            verdict(vs_plain <= TARGET_VS_PLAIN),
        )
    )
    spread = max(samples["engine"]) / min(samples["engine"])
    others = "n/a" if load.share is None else f"{load.share:.0%}"
    notes.append(
        f"timing ({args.clock} clock): {args.repeats} interleaved rounds (+1 warm-up). 'median': "
        f"medians, ratios as "
        f"medians of within-round ratios (PASS/MISS uses these); 'best': fastest round of each, "
        f"ratios of those. slowest/fastest engine round {spread:.2f}; other processes used "
        f"{others} of the CPUs meanwhile"
    )
    notes.append(
        f"prefix (built once per example, not in the per-mask times): {t_prefix:.2f} s = "
        f"{t_prefix / (med['engine'] / B):.0f} engine masks; max |engine - reference| metric "
        f"on {args.ref_masks} mask(s): {max_diff:.1e}"
    )

    # 3: scaling with the number of image tokens -----------------------------------------------
    if not args.skip_scaling and args.family == "llava":
        SB = args.scaling_batch
        smasks = masks[:SB] if SB <= B else sample_masks(SB, L, H, args.rate, seed=0)
        n_img = [(size // PATCH) ** 2 for size in IMAGE_SIZES]
        lo, hi = n_img[0], n_img[-1]
        scale_fns: dict[str, Callable[[], Any]] = {}
        sys_time: dict[str, list[float]] = {}
        keep = []
        for size, n in zip(IMAGE_SIZES, n_img, strict=True):
            if size == 336:
                m, e = model, engine
            else:
                m, i = build(args, size)
                e = AblationEngine(m, i, baseline_of(m, i, config, size), config, batch_size=SB)
                e.run_batch(0, smasks)
                keep.append(m)
            run = lambda e=e: e.run_batch(0, smasks)  # noqa: E731
            scale_fns[f"engine@{n}"] = with_sys_time(f"engine@{n}", run, sys_time)
            if n in (lo, hi):
                scale_fns[f"plain@{n}"] = with_sys_time(
                    f"plain@{n}", plain_suffix(m, e, SB), sys_time
                )
        sm: dict[str, list[float]] = {}
        scale = time_interleaved(scale_fns, args.scaling_repeats, warmup=1, samples=sm,
                                 clock=clock_of(args.clock))
        flops = [
            flops_per_layer(5 + n, 5 + n + n_suffix, args.d_model, args.d_mlp) for n in (lo, hi)
        ]
        for kind in ("engine", "plain"):
            sizes = n_img if kind == "engine" else [lo, hi]
            rows.append(
                (
                    f"{kind} ms/mask @{'/'.join(map(str, sizes))} img (B={SB})",
                    " / ".join(f"{scale[f'{kind}@{n}'] / SB * 1e3:.1f}" for n in sizes),
                    " / ".join(f"{min(sm[f'{kind}@{n}']) / SB * 1e3:.1f}" for n in sizes),
                )
            )
        for kind in ("engine", "plain"):
            growth = paired_ratio(sm, f"{kind}@{hi}", f"{kind}@{lo}")
            rows.append(
                (
                    f"{kind} growth {hi} / {lo} image tokens",
                    f"{growth:.2f}x",
                    f"{best_ratio(sm, f'{kind}@{hi}', f'{kind}@{lo}'):.2f}x",
                    f"<= {TARGET_GROWTH}x (FLOPs {flops[1] / flops[0]:.2f}x)"
                    if kind == "engine"
                    else "",
                    verdict(growth <= TARGET_GROWTH) if kind == "engine" else "",
                )
            )
        kernel = " / ".join(
            f"{statistics.median(sys_time[f'engine@{n}']) / SB * 1e3:.0f}" for n in n_img
        )
        notes.append(
            f"kernel (system) CPU time of the engine per mask @{'/'.join(map(str, n_img))} image "
            f"tokens: {kernel} ms (page faults: by default glibc maps every allocation over 32 "
            f"MB afresh, e.g. attention scores [batch, heads, suffix, prefix])"
        )

    # 4: memory ------------------------------------------------------------------------------
    mem_rows: list[tuple[str, ...]] = []
    if not args.skip_memory:
        kv = sum(t.numel() * t.element_size() for t in st.cache.keys + st.cache.values)
        alt = sum(t.numel() * t.element_size() for t in st.cache.alt_keys + st.cache.alt_values)
        mem: dict[str, list[float]] = {
            "engine, first call (builds prefix)": [],
            "engine, later call": [],
            "plain cached suffix": [],
        }
        for b in args.mem_batches:
            bm = sample_masks(b, L, H, args.rate, seed=1)
            fresh = AblationEngine(model, inp, baseline, config, batch_size=b)
            call = lambda fresh=fresh, bm=bm: fresh.run_batch(0, bm)  # noqa: E731
            mem["engine, first call (builds prefix)"].append(peak_bytes(call) / MB)
            mem["engine, later call"].append(peak_bytes(call) / MB)
            mem["plain cached suffix"].append(peak_bytes(plain_suffix(model, fresh, b)) / MB)
            del fresh
        b0, b1 = args.mem_batches
        slope = {k: (v[1] - v[0]) / (b1 - b0) for k, v in mem.items()}
        for name, v in mem.items():
            mem_rows.append(
                (
                    name,
                    f"{v[0]:.0f}",
                    f"{v[1]:.0f}",
                    f"{slope[name]:.2f}",
                    f"{v[0] - slope[name] * b0:.0f}",
                )
            )
        slope_ratio = slope["engine, later call"] / slope["plain cached suffix"]
        rows.append(
            (
                "memory per mask, engine / plain",
                f"{slope_ratio:.2f}x",
                "",
                f"<= {TARGET_MEM_SLOPE}x",
                verdict(slope_ratio <= TARGET_MEM_SLOPE),
            )
        )
        notes.append(
            f"prefix cache: clean K/V {kv / MB:.1f} MB + baseline-side K/V {alt / MB:.1f} MB, "
            f"shared by all masks ({kv / MB / L:.2f} MB of clean K/V per layer: a copy per mask "
            f"of even one layer's would add that much per mask)"
        )

    print(machine_info())
    print(
        f"model: {args.family}, {L} layers, d_model {args.d_model}, {H} heads, d_mlp "
        f"{args.d_mlp}, vocab {model.cfg.d_vocab}; vision 2 x 256; fp32. prompt: {n_prefix} "
        f"prefix tokens ({image_tokens(model, inp)}) + {n_suffix} suffix tokens. scope text, "
        f"baseline "
        f"{args.baseline}, rate {args.rate}, {int(masks.sum())} of {masks.numel()} heads "
        f"ablated in {B} masks; allocator: {malloc}\n"
    )
    table(
        ("measure", "median", "best", "target", "result"),
        [r + ("",) * (5 - len(r)) for r in rows],
    )
    if mem_rows:
        b0, b1 = args.mem_batches
        print("\npeak tensor memory allocated during one call (torch profiler), MB:")
        table(("call", f"B={b0}", f"B={b1}", "MB per mask", "intercept"), mem_rows)
    print()
    for n in notes:
        print("- " + n)
    print(f"- total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
