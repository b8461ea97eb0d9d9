"""Forward-pass speed of HookedLVLM against the HF eager model it wraps.

Builds one random LLaVA-1.5-shaped model in memory (a small CLIP tower giving 576 image
tokens, a Llama decoder of ``--layers`` x ``--d-model``; fp32, eval, eager attention) and a
batch of ``--batch`` prompts of 5 text tokens + 576 image tokens + 26 text tokens. With
``--family qwen2-vl`` / ``qwen2.5-vl`` / ``qwen3-vl`` / ``gemma3`` / ``internvl`` /
``idefics3`` / ``qwen3-vl-moe`` / ``llava-onevision-1.5`` / ``glm4v`` / ``glm4v-moe`` /
``qwen3.5`` / ``qwen3.5-moe`` / ``llama4`` / ``mllama`` / ``mistral3`` the model is that
family's instead (its own vision tower; the decoder at the same sizes: M-RoPE and q/k/v biases,
Qwen3's q/k norms and DeepStack, Gemma 3's sandwich norms, q/k norms and sliding layers, GLM's
pair RoPE, sandwich norms and GLM-4.5V's sigmoid router, InternVL's Qwen2, Idefics3's Llama,
Qwen3-VL-MoE's experts, LLaVA-OneVision-1.5's Qwen3, Qwen3.5's Gated-DeltaNet layers, Llama 4's
interleaved MoE, NoPE and chunked layers, Mistral 3's Pixtral with 2-D RoPE), 576 image tokens
for Qwen and LLaVA-OneVision-1.5, 256 for Gemma 3, for InternVL 256 per 448-px tile, for
Idefics3 64 per 512-px tile (3x3 tiles + the global image: 640), for Llama 4 144 per 336-px tile
(2x2 + the global tile: 720), for Mistral 3 576 (24 rows of 24, each row closed by a marker
token), for Llama 3.2 Vision one ``<|image|>`` token and an image side of 577 states per 336-px
tile (2x2: 2308) read by a gated cross-attention layer every fifth (no ``*_embeds`` calls: its
image is not in the embeddings). Under
``torch.no_grad()`` and torch's default thread count it times, interleaved in one process
(see :func:`benchmarks.common.time_interleaved`: 2 warm-up rounds, then ``--repeats`` rounds
in a random order each, medians):

- ``hf``: ``hf_model(**inp.to_hf(), use_cache=False)`` (ids, mask, positions, pixels and the
  family's extra inputs)
- ``forward``: ``model(inp)``
- ``run_with_cache``: ``model.run_with_cache(inp)`` (every hook cached)
- ``bridge_cache``: TransformerLens 4.3's own ``TransformerBridge`` booted from the same model
  saved as a LLaVA-1.5 folder, ``bridge.run_with_cache(input_ids, pixel_values=...,
  attention_mask=...)`` (every hook cached), and ``run_with_cache_common`` /
  ``bridge_cache_common``: both caching only the hook names they share (``--no-bridge``
  skips these)
- ``hf_embeds`` / ``forward_embeds``: the same with the projected image features computed
  beforehand: HF on ``inputs_embeds`` (token embedding + splice timed), ours on
  ``inp.with_image_embeds(...)``. This isolates the language side, the part we re-implement.

It prints the medians, the ratios to HF against their targets, and the max |logit
difference| between HF and ours. The vocabulary is the tiny tokenizer's (157 tokens), so the
unembedding is as negligible as LLaVA-1.5-7B's (2% of its FLOPs) and does not dilute ratios.

``--keep-freed-memory`` makes glibc keep freed memory instead of returning it to the kernel;
the difference it makes is the cost of page-faulting memory in again (mostly the ~800 MB that
``run_with_cache`` keeps alive). Results and their reading: ``docs/benchmarks.md``.

Run: ``python benchmarks/forward.py`` (under 1.5 minutes on 2 idle CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    OtherLoad,
    boot_tl_bridge,
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

#: Target ratio to ``hf`` of each timed call.
TARGETS = {"forward": 1.05, "run_with_cache": 1.3, "forward_embeds": 1.05}
#: Target ratio of our ``run_with_cache`` to the TransformerLens bridge's: no slower.
BRIDGE_TARGET = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--family",
        default="llava",
        choices=["llava", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "gemma3", "internvl", "idefics3",
                 "qwen3-vl-moe", "llava-onevision-1.5", "glm4v", "glm4v-moe", "qwen3.5",
                 "qwen3.5-moe", "llama4", "mllama", "mistral3"],
    )
    model_arguments(parser)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU seconds (steadier on a shared machine)")
    parser.add_argument("--no-bridge", action="store_true", help="skip the TL bridge calls")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc: keep freed memory for reuse instead of page-faulting it in again",
    )
    args = parser.parse_args()
    malloc = "glibc default"
    if args.keep_freed_memory:
        malloc = "glibc keeping freed memory" if keep_freed_memory() else "mallopt failed"
    d_mlp = args.d_mlp or int(2.75 * args.d_model)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    sizes = dict(n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, d_mlp=d_mlp)
    side, vision = 336, "CLIP 2 x 256"
    if args.family == "llava":
        hf, tokenizer, image_processor = build_random_llava(**sizes)
    else:
        hf, tokenizer, image_processor, side = build_random_family(args.family, **sizes)
        vision = f"{args.family} vision 2 x 256 at {side} px"
    model = HookedLVLM.from_hf(hf, tokenizer=tokenizer, image_processor=image_processor)
    inp = model.prepare(random_images(args.batch, side), [llava15_prompt()] * args.batch)
    full = dict(inp.to_hf(), use_cache=False)
    # on precomputed image features: the language side only (positions, masks, token types)
    hf_kwargs = {k: v for k, v in full.items() if k in ("attention_mask", "position_ids",
                                                         "token_type_ids", "use_cache")}
    is_image = (inp.input_ids == model.cfg.image_token_id)[..., None]

    with torch.no_grad():
        image_embeds = model.image_embeddings(inp)
        inp_embeds = inp.with_image_embeds(image_embeds)  # (not run for DeepStack models)
        flat_embeds = torch.cat(image_embeds)

        def hf_embeds() -> torch.Tensor:
            x = hf.get_input_embeddings()(inp.input_ids).masked_scatter(is_image, flat_embeds)
            return hf(inputs_embeds=x, **hf_kwargs).logits

        fns = {
            "hf": lambda: hf(**full).logits,
            "forward": lambda: model(inp),
            "run_with_cache": lambda: model.run_with_cache(inp),
            "hf_embeds": hf_embeds,
            "forward_embeds": lambda: model(inp_embeds),
        }
        if model.cfg.decoder.deepstack:  # DeepStack features are not in precomputed embeddings
            del fns["hf_embeds"], fns["forward_embeds"]
        if model.cfg.decoder.cross_attention is not None:  # the image is not in the embeddings
            del fns["hf_embeds"], fns["forward_embeds"]
        ref = fns["hf"]()
        diffs = {
            "forward": (fns["forward"]() - ref).abs().max().item(),
            "run_with_cache": (fns["run_with_cache"]()[0] - ref).abs().max().item(),
            "forward_embeds": float("nan") if "hf_embeds" not in fns
            else (fns["forward_embeds"]() - hf_embeds()).abs().max().item(),
        }
        if not args.no_bridge and args.family == "llava":  # the bridge: LLaVA-1.5 only
            folder = tempfile.mkdtemp(prefix="llava15_")
            bridge = boot_tl_bridge(hf, tokenizer, image_processor, folder)
            bkw = dict(pixel_values=inp.pixel_values, attention_mask=inp.attention_mask)
            common = sorted(set(model.hook_dict) & set(bridge.hook_dict))
            fns["bridge_cache"] = lambda: bridge.run_with_cache(inp.input_ids, **bkw)
            fns["run_with_cache_common"] = lambda: model.run_with_cache(inp, names_filter=common)
            fns["bridge_cache_common"] = lambda: bridge.run_with_cache(
                inp.input_ids, names_filter=common, **bkw)
            out, cache = fns["bridge_cache"]()
            diffs["bridge_cache"] = (out - ref).abs().max().item()
            n_cached = {"run_with_cache": len(model.run_with_cache(inp)[1]),
                        "bridge_cache": len(cache), "common": len(common)}
            del out, cache
        samples: dict[str, list[float]] = {}
        with OtherLoad() as load:
            medians = time_interleaved(fns, args.repeats, warmup=2, samples=samples, shuffle=True,
                                       clock=clock_of(args.clock))

    print(machine_info())
    print(
        f"model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, d_mlp {d_mlp}, "
        f"vocab {model.cfg.d_vocab}; {vision}, {int(inp.groups['image'].sum())} image tokens; "
        f"fp32; malloc: {malloc}"
    )
    print(
        f"input: batch {args.batch} x {inp.input_ids.shape[1]} tokens; {args.repeats} "
        f"interleaved repeats (+2 warm-up); max |logit| {ref.abs().max().item():.2f}\n"
    )
    print(f"| {'call':<21} | median s |  min s | vs HF  | target          | max abs dlogit |")
    print(f"|{'-' * 23}|----------|--------|--------|-----------------|----------------|")
    for name, sec in medians.items():
        ratio = target = diff = ""
        if name.startswith("bridge") or name.endswith("_common"):
            diff = f"{diffs[name]:.1e}" if name in diffs else ""
        elif not name.startswith("hf"):
            r = paired_ratio(samples, name, "hf_embeds" if name.endswith("_embeds") else "hf")
            ok = "ok" if r <= TARGETS[name] else "OVER"
            ratio, target = f"{r:.3f}x", f"<= {TARGETS[name]:.2f}x {ok}"
            diff = f"{diffs[name]:.1e}"
        print(
            f"| {name:<21} | {sec:8.3f} | {min(samples[name]):6.3f} | {ratio:>6} | {target:<15} "
            f"| {diff:>14} |"
        )
    if "bridge_cache" in fns:
        print(f"\nhooks cached: ours {n_cached['run_with_cache']}, bridge "
              f"{n_cached['bridge_cache']} (aliases included), common names {n_cached['common']}")
        for ours, theirs in (("run_with_cache", "bridge_cache"),
                             ("run_with_cache_common", "bridge_cache_common")):
            r = paired_ratio(samples, ours, theirs)
            ok = "ok" if r <= BRIDGE_TARGET else "OVER"
            print(f"{ours} / TL bridge {theirs}: {r:.3f}x (best rounds "
                  f"{min(samples[ours]) / min(samples[theirs]):.3f}x), target <= "
                  f"{BRIDGE_TARGET:.2f}x {ok}")
    spread = max(samples["hf"]) / min(samples["hf"])
    others = "n/a" if load.share is None else f"{load.share:.0%}"
    print(
        f"\nclock: {args.clock}. vs HF: median over rounds of the within-round ratio. Noise: "
        f"slowest/fastest hf "
        f"{spread:.2f}; other processes used {others} of the CPUs while timing"
        + (" (noisy: rerun on a quiet machine)" if spread > 1.5 else "")
    )


if __name__ == "__main__":
    main()
