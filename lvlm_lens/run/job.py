"""``lvlm-lens attribute`` end to end: model + data -> attribution -> comparison -> report."""

from __future__ import annotations

import importlib.metadata as md
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lvlm_lens.attribution.comparison import compare_rankings, comparison_notes
from lvlm_lens.data import load_folder, synthetic_records
from lvlm_lens.files import atomic_json
from lvlm_lens.interventions.baseline_check import baseline_note, check_baseline
from lvlm_lens.model import HookedLVLM
from lvlm_lens.run.distributed import current_shard
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.runner import BaselineCache, run_attribution
from lvlm_lens.run.store import save_rankings
from lvlm_lens.toy import toy_checkpoint_path
from lvlm_lens.viz.attention_maps import example_views
from lvlm_lens.viz.report import ReportData, write_report


def default_model_path() -> Path:
    """The bundled trained toy LVLM, if this version ships it."""
    path = toy_checkpoint_path()
    if not (path / "config.json").exists():
        raise ValueError(
            "this version ships no trained toy LVLM checkpoint yet: pass --model "
            "FOLDER_OR_HUB_ID (`python -m lvlm_lens.run.demo` runs on a tiny random one)"
        )
    return path


def load_model(opts: RunOptions) -> Any:
    """The run's model: ``opts.model`` or the bundled toy LVLM (one GPU per local rank)."""
    device = opts.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{current_shard().local_rank}"
    path = opts.model or default_model_path()
    return HookedLVLM.from_pretrained(path, device=device, dtype=opts.dtype)


def load_records(opts: RunOptions) -> tuple[list[Any], list[Image.Image]]:
    """The examples and the reference images of the ``mean`` baseline."""
    if opts.data is None:
        records = synthetic_records(opts.n_examples, opts.data_seed)
        refs = [r.image for r in synthetic_records(opts.n_reference, opts.data_seed + 1)]
        return records, refs
    records = load_folder(opts.data)
    refs = [r.image for r in records[: opts.n_reference]]
    return (records[: opts.n_examples] if opts.n_examples else records), refs


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
        bases = [baselines(x) for x in inputs]
        check = check_baseline(model, inputs, bases, cfg.ablation, cfg.metric)
        summary["baseline_check"] = check.summary()
        notes.append(baseline_note(check, cfg.ablation.baseline))
        inputs, bases = [inputs[i] for i in check.kept], [bases[i] for i in check.kept]
        if inputs:
            rankings, curves, band = compare_rankings(
                model,
                result,
                inputs,
                bases,
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
