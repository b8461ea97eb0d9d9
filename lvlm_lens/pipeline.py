"""``lvlm-lens attribute`` end to end: model + data -> attribution -> comparison -> report."""

from __future__ import annotations

import importlib.metadata as md
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lvlm_lens.distributed import current_shard
from lvlm_lens.evaluation import compare_rankings, comparison_notes, save_rankings
from lvlm_lens.inputs import LVLMInput
from lvlm_lens.report import ExampleView, ReportData, write_report
from lvlm_lens.runner import BaselineCache, RunOptions, atomic_json, run_attribution
from lvlm_lens.vision import NEWLINE


def default_model_path() -> Path:
    """The bundled trained toy LVLM, if this version ships it."""
    try:
        from lvlm_lens.toy import toy_checkpoint_path

        path = toy_checkpoint_path()
    except ImportError:
        path = None
    if path is None or not (path / "config.json").exists():
        raise ValueError(
            "this version ships no trained toy LVLM checkpoint yet: pass --model "
            "FOLDER_OR_HUB_ID (`python -m lvlm_lens.demo` runs on a tiny random one)"
        )
    return path


def load_model(opts: RunOptions) -> Any:
    """The run's model: ``opts.model`` or the bundled toy LVLM (one GPU per local rank)."""
    from lvlm_lens import HookedLVLM

    device = opts.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{current_shard().local_rank}"
    path = opts.model or default_model_path()
    return HookedLVLM.from_pretrained(path, device=device, dtype=opts.dtype)


def load_records(opts: RunOptions) -> tuple[list[Any], list[Image.Image]]:
    """The examples and the reference images of the ``mean`` baseline."""
    from lvlm_lens import data

    if opts.data is None:
        records = data.synthetic_records(opts.n_examples, opts.data_seed)
        refs = [r.image for r in data.synthetic_records(opts.n_reference, opts.data_seed + 1)]
        return records, refs
    records = data.load_folder(opts.data)
    refs = [r.image for r in records[: opts.n_reference]]
    return (records[: opts.n_examples] if opts.n_examples else records), refs


def patch_attention(
    model: Any, inp: LVLMInput, heads: list[tuple[int, int]]
) -> dict[str, np.ndarray]:
    """Attention from the final token to the (base-tile) image patches of some heads."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads]
    with torch.no_grad():
        _, cache = model.run_with_cache(inp, names_filter=names, return_cache_object=False)
    coords = inp.image_coords[0]
    keep = (coords[:, 0] == 0) & (coords[:, 1] != NEWLINE)
    pos = inp.positions("image")[keep]
    g = model.vision.tile_grid
    out = {}
    for layer, head in heads:
        row = cache[f"blocks.{layer}.attn.hook_pattern"][0, head, -1, pos].float().cpu()
        grid = torch.zeros(g, g)
        grid[coords[keep, 1], coords[keep, 2]] = row
        out[f"L{layer}H{head}"] = grid.numpy()
    return out


def example_views(
    model: Any,
    records: list[Any],
    infos: list[dict],
    kept: list[int],
    heads: list[tuple[int, int]],
    n: int = 4,
) -> list[ExampleView]:
    """A few examples with the top heads' attention over their patches."""
    from lvlm_lens.data import patch_grid_mask

    views = []
    for i in kept[:n]:
        rec = records[i]
        inp = model.prepare(rec.image, rec.prompt)
        size = model.vision.config.vision_config.image_size
        image = rec.load_image().resize((size, size))
        obj = None
        if rec.mask is not None and model.cfg.lvlm_type == "llava":
            obj = patch_grid_mask(np.asarray(rec.mask), model.vision.tile_grid).numpy()
        views.append(
            ExampleView(
                image,
                str(rec.answer),
                infos[i]["prediction"],
                patch_attention(model, inp, heads),
                obj,
            )
        )
    return views


def versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers."""
    out = {}
    for name in ("lvlm_lens", "torch", "transformers", "transformer-lens"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def attribute(
    opts: RunOptions, *, overwrite: bool = False, curve_examples: int = 16
) -> Path | None:
    """Run the whole job; returns the report path on rank 0 (``None`` on other ranks)."""
    t0 = time.time()
    model = load_model(opts)
    records, refs = load_records(opts)
    image = Image.open(opts.baseline_image) if opts.baseline_image else None
    merged = run_attribution(
        model, records, opts, overwrite=overwrite, reference_images=refs, baseline_image=image
    )
    if merged is None:
        return None
    t_masks = time.time() - t0
    out, result, infos, kept = merged["out"], merged["result"], merged["infos"], merged["kept"]
    cfg = opts.attribution
    summary: dict[str, Any] = {
        "model": model.cfg.model_name,
        "data": opts.data or "synthetic",
        "options": opts.fingerprint(),
        "versions": versions(),
        "n_examples": len(records),
        "n_kept": len(kept),
        "accuracy": sum(i["correct"] for i in infos) / len(infos),
        "wrong_examples": [i["id"] for i in infos if not i["correct"]],
        "fit": {
            "pooled_r": result.pooled_r,
            "pooled_r2": result.pooled_r2,
            "median_example_r": float(result.pearson_r.nanmedian()),
        },
        "top_heads": [f"L{a}H{b}" for a, b in result.top_heads(10)],
    }
    n_wrong = sum(not i["correct"] for i in infos)
    notes = (
        [
            f"{n_wrong} of {len(infos)} example(s) were answered wrongly and "
            f"{'kept (--keep-wrong)' if opts.keep_wrong else 'excluded'}; see summary.json."
        ]
        if n_wrong
        else []
    )
    rankings, curves, band = {}, {}, None
    if opts.rankings:
        t1 = time.time()
        subset = kept[:curve_examples]
        baselines = BaselineCache(model, opts, refs, image)
        inputs = [
            model.prepare(
                records[i].image,
                records[i].prompt,
                answers=records[i].answer,
                answer_rule=opts.answer_rule,
            )
            for i in subset
        ]
        rankings, curves, band = compare_rankings(
            model,
            result,
            inputs,
            [baselines(x) for x in inputs],
            cfg.ablation,
            cfg.metric,
            n_random=opts.n_random,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
        )
        save_rankings(out / "rankings.safetensors", rankings)
        notes += comparison_notes(curves, band, model.cfg.n_layers * model.cfg.n_heads)
        summary["curves"] = {
            n: {
                "ks": c.ks.tolist(),
                "faithfulness": c.faithfulness.tolist(),
                "completeness": c.completeness.tolist(),
            }
            for n, c in curves.items()
        }
        summary["seconds_comparison"] = time.time() - t1
    summary["seconds_attribution"] = t_masks
    summary["notes"] = notes
    atomic_json(summary, out / "summary.json")
    views = example_views(model, records, infos, kept, result.top_heads(3))
    return write_report(out, ReportData(result, rankings, curves, band, views, summary, notes))
