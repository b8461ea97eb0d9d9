"""``lvlm-lens attribute`` end to end: model + data -> attribution -> comparison -> report."""

from __future__ import annotations

import importlib.metadata as md
import math
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lvlm_lens.attribution.comparison import compare_rankings, comparison_notes
from lvlm_lens.attribution.curves import Curves, RandomBand
from lvlm_lens.attribution.head_attribution import build_engine
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.data import load_folder, synthetic_records
from lvlm_lens.data.images import open_image
from lvlm_lens.errors import OptionError
from lvlm_lens.interventions.baseline_check import BaselineCheck, baseline_note, check_baseline
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.model import HookedLVLM
from lvlm_lens.run.distributed import current_shard
from lvlm_lens.run.examples import prepare_record
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.outcome import AttributedExample, RunOutcome
from lvlm_lens.run.preflight import check_device, check_prompts
from lvlm_lens.run.report_files import save_report_inputs
from lvlm_lens.run.runner import BaselineCache, run_attribution
from lvlm_lens.run.store import CheckpointFiles
from lvlm_lens.run.threads import apply_threads
from lvlm_lens.toy import toy_checkpoint_path
from lvlm_lens.viz.attention_maps import example_views
from lvlm_lens.viz.report import write_report

TOY_LABEL = "toy LVLM (bundled)"


def default_model_path() -> Path:
    """The bundled trained toy LVLM, if this version ships it."""
    path = toy_checkpoint_path()
    if not (path / "config.json").exists():
        raise ValueError(
            "this version ships no trained toy LVLM checkpoint yet: pass --model "
            "FOLDER_OR_HUB_ID (`python -m lvlm_lens.run.demo` runs on a tiny random one)"
        )
    return path


def load_model(opts: RunOptions) -> HookedLVLM:
    """The run's model (``opts.model`` or the bundled toy LVLM; one GPU per local rank), with
    torch's CPU threads set for it (``opts.threads``)."""
    device = opts.device
    check_device(device)
    if device is None and torch.cuda.is_available():
        device = f"cuda:{current_shard().local_rank}"
    path = opts.model or default_model_path()
    model = HookedLVLM.from_pretrained(path, device=device, dtype=opts.dtype)
    apply_threads(model, opts.threads)
    return model


def model_label(opts: RunOptions) -> str:
    """A short name of the model for titles: the hub id, a folder's name, or the toy."""
    if opts.model is None:
        return TOY_LABEL
    path = Path(opts.model)
    return path.resolve().name if path.is_dir() else opts.model


def load_records(opts: RunOptions) -> tuple[list[Any], list[Image.Image]]:
    """The examples and the reference images of the ``mean`` baseline."""
    if opts.data is None:
        records = synthetic_records(opts.n_examples, opts.data_seed)
        refs = [r.image for r in synthetic_records(opts.n_reference, opts.data_seed + 1)]
        return records, refs
    records = load_folder(opts.data)
    refs = [r.image for r in records[: opts.n_reference]]
    return (records[: opts.n_examples] if opts.n_examples else records), refs


def load_baseline_image(opts: RunOptions) -> Image.Image | None:
    """The image of ``--baseline image``, if one is given."""
    if opts.baseline_image is None:
        if opts.attribution.ablation.baseline == "image":
            raise OptionError("baseline_image", "is needed by the 'image' baseline: pass a file")
        return None
    return open_image(opts.baseline_image, "--baseline-image")


def versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers."""
    out = {}
    for name in ("lvlm_lens", "torch", "transformers", "transformer-lens"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_summary(
    opts: RunOptions, model: HookedLVLM, examples: list[AttributedExample],
    result: AttributionResult,
) -> dict[str, Any]:
    """What ``summary.json`` records: model, data, accuracy, fit quality, top heads, options."""
    top = result.top_heads(10)
    coef = result.pooled_coef if result.pooled_coef is not None else result.coef.mean(0)
    return {
        "model": model.cfg.model_name,
        "model_label": model_label(opts),
        "heads": [model.cfg.n_layers, model.cfg.n_heads],
        "data": opts.data or "synthetic",
        "n_examples": len(examples),
        "n_kept": sum(e.attributed for e in examples),
        "accuracy": sum(e.correct for e in examples) / len(examples),
        "wrong_examples": [e.id for e in examples if not e.correct],
        "fit": {
            "pooled_r": result.pooled_r,
            "pooled_r2": result.pooled_r2,
            "median_example_r": float(result.pearson_r.nanmedian()),
            "median_example_r2": float(result.r2.nanmedian()),
        },
        "top_heads": [f"L{a}H{b}" for a, b in top],
        "top_heads_coef": [float(coef[a, b]) for a, b in top],
        "options": opts.fingerprint(),
        "versions": versions(),
    }


def run_notes(opts: RunOptions, summary: dict[str, Any]) -> list[str]:
    """Findings about the run itself: excluded examples, a fit whose quality is unknown."""
    notes: list[str] = []
    n, wrong = summary["n_examples"], len(summary["wrong_examples"])
    if wrong:
        what = "kept (--keep-wrong)" if opts.keep_wrong else "excluded"
        notes.append(f"{wrong} of {n} example(s) were answered wrongly and {what}; "
                     "their ids are in summary.json.")  # fmt: skip
    fit = summary["fit"]
    if any(v is not None and math.isnan(v) for v in (fit["pooled_r"], fit["median_example_r"])):
        notes.append("Part of the fit quality is NaN: the metric did not vary over the held-out "
                     "masks, so the coefficients are not checked; use more masks (--num-masks) "
                     "or a higher --ablation-rate.")  # fmt: skip
    return notes


def compare(
    model: HookedLVLM,
    opts: RunOptions,
    examples: list[AttributedExample],
    result: AttributionResult,
    baselines: BaselineCache,
    engines: dict[int, AblationEngine] | None = None,
    checkpoints: CheckpointFiles | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Curves], RandomBand | None, BaselineCheck]:
    """Head attribution against the other rankings, on those of ``examples`` whose
    all-heads effect is large enough to normalise by (:func:`check_baseline`); the check is
    returned too. The masked runs' ``engines`` (by example index) are reused with their
    inputs and baselines (an example without one, e.g. finished by an earlier run, gets it
    built here), and every finished piece is kept in ``checkpoints`` for a resumed run."""
    cfg, built = opts.attribution, engines or {}
    engines = []
    for e in examples:
        engine = built.get(e.index)
        if engine is None:
            x = prepare_record(model, e.record, opts.answer_rule)
            engine = build_engine(model, x, baselines(x), cfg.ablation, cfg.metric, cfg.batch_size)
        engines.append(engine)
    inputs, bases = [e.inp for e in engines], [e.baseline for e in engines]
    keys = [f"{e.index}-{e.row}" for e in examples]  # a changed row: new pieces
    check = check_baseline(model, engines, checkpoints=checkpoints, keys=keys)
    if not check.kept:
        return {}, {}, None, check
    return *compare_rankings(
        model,
        result,
        [inputs[i] for i in check.kept],
        [bases[i] for i in check.kept],
        cfg.ablation,
        cfg.metric,
        n_random=opts.n_random,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        engines=[engines[i] for i in check.kept],
        checkpoints=checkpoints,
        keys=[keys[i] for i in check.kept],
    ), check


def run_job(opts: RunOptions, *, overwrite: bool = False,
            curve_examples: int = 16) -> RunOutcome | None:  # fmt: skip
    """Run the whole job: write its files and its report, drawn from the outcome in memory
    (``lvlm-lens report`` draws the same page from the files); returns the outcome on rank 0
    (``None`` on other ranks)."""
    t0 = time.time()
    model = load_model(opts)
    records, refs = load_records(opts)
    check_prompts(model, records)
    image = load_baseline_image(opts)
    run = run_attribution(
        model, records, opts, overwrite=overwrite, reference_images=refs, baseline_image=image,
        keep_engines=curve_examples if opts.rankings else 0,
    )
    if run is None:
        return None
    summary = run_summary(opts, model, run.examples, run.result)
    summary["seconds_attribution"] = time.time() - t0
    summary["warnings"] = run_notes(opts, summary)
    outcome = RunOutcome(run, summary, list(summary["warnings"]))
    if opts.rankings:
        t1 = time.time()
        outcome.rankings, outcome.curves, outcome.band, check = compare(  # reusing the masked
            model, opts, run.attributed[:curve_examples], run.result, run.baselines,  # runs'
            run.engines, CheckpointFiles(run.out / "comparison"),  # a resume skips what is done
        )
        summary["baseline_check"] = check.summary()
        outcome.notes.append(baseline_note(check, opts.attribution.ablation.baseline))
        if outcome.curves:
            outcome.notes += comparison_notes(outcome.curves, outcome.band,
                                              model.cfg.n_layers * model.cfg.n_heads)
        summary["curves"] = {
            n: {f: getattr(c, f).tolist() for f in ("ks", "faithfulness", "completeness")}
            for n, c in outcome.curves.items()
        }
        summary["seconds_comparison"] = time.time() - t1
    shown = run.attributed[:4]
    outcome.views = example_views(model, [e.record for e in shown], [e.prediction for e in shown],
                                  run.result.top_heads(3))
    save_report_inputs(run.out, outcome.report_data())
    write_report(run.out, outcome.report_data())
    return outcome


def attribute(
    opts: RunOptions, *, overwrite: bool = False, curve_examples: int = 16
) -> Path | None:
    """Run the whole job (:func:`run_job`); returns the report path on rank 0 (``None`` on
    other ranks)."""
    outcome = run_job(opts, overwrite=overwrite, curve_examples=curve_examples)
    return None if outcome is None else outcome.run.out / "report.html"


def terminal_summary(outcome: RunOutcome) -> str:
    """A few lines for the terminal at the end of a run: accuracy, fit, top heads, report."""
    s, report = outcome.summary, outcome.run.out / "report.html"
    fit = s["fit"]
    r = lambda v: "n/a" if v is None or math.isnan(v) else f"{v:.2f}"  # noqa: E731
    correct = round(s["accuracy"] * s["n_examples"])
    metric = s["options"]["attribution"]["metric"]
    heads = ", ".join(
        f"{h} ({-b:+.2f})" for h, b in zip(s["top_heads"][:5], s["top_heads_coef"], strict=False)
    )
    lines = [
        f"{s['model_label']} on {s['data']}: {correct}/{s['n_examples']} examples answered "
        f"correctly ({s['accuracy']:.0%}); {s['n_kept']} attributed",
        f"fit on held-out masks: r = {r(fit['pooled_r'])} pooled over examples, "
        f"{r(fit['median_example_r'])} per example (median)",
        f"top heads (importance = -beta, {metric} units): {heads}",
        *[f"note: {n}" for n in s.get("warnings", [])],
        f"report: {report}",
    ]
    return "\n".join(lines)
