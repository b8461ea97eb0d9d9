"""Throughput of the masked-run engine at LLaVA-1.5-7B shape: ``head_attribution.py --preset``.

A random LLaVA-1.5-7B-shaped model (32 layers, d_model 4096, 32 heads, d_mlp 11008; CLIP 2 x 256
giving 576 image tokens) built directly on the device in bf16, one prompt of 5 text + 576 image
+ 40 text tokens, head ablation with scope ``text`` (prefix = 581 tokens, suffix = 40 per mask),
baseline ``zero``, masks at rate 0.05. It prints:

- masks/s of ``AblationEngine.run_batch`` over ``--batches`` batches of ``--batch`` masks,
  the device synchronised only before and after the loop; on CUDA the loop runs under
  ``torch.cuda.set_sync_debug_mode("error")``, so any host-device synchronisation inside it
  fails the run (and is reported);
- memory per mask: the slope of the peak memory of one call between two batch sizes (CUDA:
  ``max_memory_allocated``; CPU: the torch profiler's allocation events);
- the share of the FLOP limit reached: model FLOPs of the suffix tokens (projections, MLP,
  scores and values against every earlier position, all layers) x masks/s, over the device's
  dense bf16 peak (``--peak-tflops``; known for H100 / H200 / A100).

``--reduce K`` divides layers, d_model, heads and d_mlp by ``K`` (d_head stays 128, the token
counts stay), so that the preset runs on a CPU to show that it works.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import OtherLoad, build_random_llava, machine_info, random_images
from benchmarks.head_attribution import flops_per_layer, peak_bytes
from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.interventions.engine import AblationEngine

PRESETS = {"llava-7b": dict(layers=32, d_model=4096, heads=32, d_mlp=11008, suffix=40)}
#: Dense bf16 peak, TFLOP/s, by a substring of ``torch.cuda.get_device_name()`` (first match).
PEAK_BF16 = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}
TARGET_MASKS_PER_S = 1000.0  # on one H100


def prompt(n_after: int) -> str:
    """A raw LLaVA-1.5-style prompt: 5 tokens, ``<image>``, then ``n_after`` tokens (tiny
    tokenizer, one token per word)."""
    words = ("what is the main object in this image ? answer with one word . " * 8).split()
    return "Please answer USER: <image>\n" + " ".join(words[: n_after - 3]) + " ASSISTANT:"


def device_peak(device: torch.device, given: float | None) -> float | None:
    """The dense bf16 peak in TFLOP/s: ``given``, else the table's for this CUDA device."""
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mask_loop(engine: AblationEngine, batches: list[torch.Tensor], device: torch.device):
    """Run the batches back to back; returns (seconds, the first synchronising call or None).

    On CUDA the loop runs under ``set_sync_debug_mode("error")``: a call that makes the host
    wait for the device raises, is reported, and the loop is timed again without the check.
    """
    problem = None
    sync(device)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = [engine.run_batch(0, m) for m in batches]
        except RuntimeError as err:
            problem = str(err).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        if problem is not None:
            sync(device)
            start = time.perf_counter()
            out = [engine.run_batch(0, m) for m in batches]
    else:
        out = [engine.run_batch(0, m) for m in batches]
    sync(device)
    del out
    return time.perf_counter() - start, problem


def peak_memory(engine: AblationEngine, masks: torch.Tensor, device: torch.device) -> float:
    """Peak memory allocated during one call, bytes."""
    if device.type != "cuda":
        return peak_bytes(lambda: engine.run_batch(0, masks))
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    engine.run_batch(0, masks)
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def run_preset(args: argparse.Namespace) -> None:
    """Build the preset's model and print its throughput (see the module docstring)."""
    p, k = PRESETS[args.preset], args.reduce
    n_layers, d_model, n_heads, d_mlp = (p[x] // k for x in ("layers", "d_model", "heads", "d_mlp"))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    hf, tok, ip = build_random_llava(n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                                     d_mlp=d_mlp, device=device, dtype=torch.bfloat16)
    model = HookedLVLM.from_hf(hf, tokenizer=tok, image_processor=ip)
    inp = model.prepare(random_images(1), prompt(p["suffix"]))
    config = HeadAblation(baseline="zero")
    b = args.batch
    engine = AblationEngine(model, inp, compute_baseline(model, inp, config), config,
                            batch_size=b)
    masks = sample_masks(b * args.batches, n_layers, n_heads, args.rate, seed=0)
    batches = list(masks.split(b))
    st = engine._example(0)
    n_prefix, n_suffix = st.cache.length, st.x.shape[1]
    for m in batches[:2]:  # warm-up (kernels, allocator)
        engine.run_batch(0, m)
    t_build = time.perf_counter() - t0
    with OtherLoad() as load:
        times, problems = [], set()
        for _ in range(args.repeats):
            sec, problem = mask_loop(engine, batches, device)
            times.append(sec)
            problems |= {problem} - {None}
    best = min(times)
    rate = len(masks) / sorted(times)[len(times) // 2]
    b0, b1 = max(1, b // 4), b
    mem = [peak_memory(engine, masks[:n], device) for n in (b0, b1)]
    per_mask = (mem[1] - mem[0]) / (b1 - b0)
    flops = flops_per_layer(n_prefix, n_prefix + n_suffix, d_model, d_mlp) * n_layers
    peak = device_peak(device, args.peak_tflops)
    share = "n/a (pass --peak-tflops)" if peak is None else f"{flops * rate / (peak * 1e12):.1%}"
    syncs = ("none (checked with set_sync_debug_mode)" if not problems else "; ".join(problems))
    if device.type != "cuda":
        syncs = "not checkable on CPU (tests/interventions/test_engine_no_sync.py)"
    print(machine_info())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; preset {args.preset}" + (f" reduced {k}x" if k > 1 else "") +
          f": {n_layers} layers, d_model {d_model}, {n_heads} heads, d_mlp {d_mlp}, bf16; "
          f"{n_prefix} prefix + {n_suffix} suffix tokens; {b} masks x {len(batches)} batches "
          f"per loop, {args.repeats} loops; rate {args.rate}; build + prefix {t_build:.0f} s\n")
    rows = [
        ("masks/s (median loop)", f"{rate:,.1f}"),
        ("masks/s (best loop)", f"{len(masks) / best:,.1f}"),
        ("model FLOPs per mask (suffix tokens)", f"{flops / 1e9:,.1f} GFLOP"),
        ("FLOP rate reached", f"{flops * rate / 1e12:,.2f} TFLOP/s"),
        ("share of the bf16 FLOP limit", share + (f" of {peak:g} TFLOP/s" if peak else "")),
        (f"memory per mask (slope B={b0}..{b1})", f"{per_mask / 2**20:,.1f} MB"),
        (f"memory of one call at B={b1}", f"{mem[1] / 2**20:,.0f} MB"),
        ("host-device syncs in the mask loop", syncs),
    ]
    if device.type == "cuda" and k == 1:
        ok = "PASS" if rate >= TARGET_MASKS_PER_S else "MISS"
        rows.append(("target >= 1,000 masks/s on one H100", ok))
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")
    others = "n/a" if load.share is None else f"{load.share:.0%}"
    print(f"\n- loops of {len(masks)} masks took {', '.join(f'{t:.2f}' for t in times)} s; "
          f"other processes used {others} of the CPUs meanwhile")


def add_arguments(parser: Any) -> None:
    """The preset's flags, on ``head_attribution.py``'s parser."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="throughput at a real model's shape (bf16) instead of the default "
                             "comparison; see benchmarks/throughput.py")
    parser.add_argument("--reduce", type=int, default=1,
                        help="with --preset: divide layers, width, heads and d_mlp by this")
    parser.add_argument("--device", default=None, help="with --preset: default cuda if present")
    parser.add_argument("--batches", type=int, default=8, help="with --preset: batches per loop")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="with --preset: the device's dense bf16 peak (TFLOP/s)")
