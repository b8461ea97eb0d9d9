"""``python -m lvlm_lens.run.claims``: every number of ``docs/claims.md``, from one seeded command.

On the science toy (``load_toy(name="science")``, 8 layers x 8 heads; or, with ``--toy
science_v2``, a science toy v2 checkpoint, :mod:`lvlm_lens.run.claims_toys`): the baselines'
all-heads answers (the toy and the bundled one), head attribution on the object-identification
question with the per-example and pooled ranking comparison, the spread of the transfer over
heads, attention weight vs importance, semantic vs appearance, token-level flow by attention
knockout, and object vs background image tokens. Writes ``claims.json``, CSV tables and PNG
figures to ``--out``; prints a one-screen summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lvlm_lens.analysis.faithfulness import random_rankings, ranking_curves
from lvlm_lens.analysis.flow import FlowConfig, token_flow
from lvlm_lens.analysis.ranking_comparison import (
    layer_distribution,
    paired_comparison,
    single_head_spread,
)
from lvlm_lens.analysis.regions import region_ablation
from lvlm_lens.analysis.semantics import semantic_similarity
from lvlm_lens.analysis.stats import bootstrap_ci, spearman
from lvlm_lens.attribution.comparison import HEAD_ATTRIBUTION, example_rankings
from lvlm_lens.attribution.head_attribution import AttributionConfig, build_engine, fit_result
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.data import render_example
from lvlm_lens.data.questions import (
    ATTRIBUTES,
    attribute_answer,
    attribute_image_prompt,
    attribute_records,
)
from lvlm_lens.data.records import synthetic_records
from lvlm_lens.data.synthetic import CLASSES
from lvlm_lens.interventions.ablation import BASELINES, HeadAblation, compute_baseline
from lvlm_lens.interventions.baseline_check import check_baseline
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.interventions.knockout import knockout_effect
from lvlm_lens.interventions.token_ablation import mean_image_baseline
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.run.claims_semantics import LOOKS, semantic_grid, within_look_test
from lvlm_lens.run.claims_toys import (
    TOYS,
    ClaimsToy,
    replace_toy_block,
    resolve_toy,
    toy_note,
    toy_table,
)
from lvlm_lens.run.examples import prepare_records
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.seeds import aggregate, markdown
from lvlm_lens.toy import load_toy
from lvlm_lens.toy.templates import apply_template


def _prepare(model: HookedLVLM, records: list[Any]) -> list[Any]:
    return prepare_records(model, records)


def _correct(model: HookedLVLM, inputs: list[Any]) -> list[int]:
    with torch.no_grad():
        return [
            i for i, x in enumerate(inputs) if int(model(x)[0, -1].argmax()) == int(x.answer_ids[0])
        ]


def _correct_in_batch(model: HookedLVLM, inp: Any) -> list[int]:
    """The examples of one batch whose final-position argmax is the answer."""
    with torch.no_grad():
        return (model(inp)[:, -1].argmax(-1) == inp.answer_ids).nonzero().flatten().tolist()


def baseline_table(
    model: HookedLVLM, records: list[Any], refs: list[Any], metric: str
) -> dict[str, Any]:
    """All-heads answers and flagged examples under every baseline."""
    inputs = _prepare(model, records)
    out = {}
    for name in BASELINES:
        cfg = HeadAblation(baseline=name)
        bases = [compute_baseline(model, x, cfg, baseline_image=refs[0], reference_images=refs)
                 for x in inputs]  # fmt: skip
        check = check_baseline(model, [build_engine(model, x, b, cfg, metric)
                                       for x, b in zip(inputs, bases, strict=True)])
        still_right = [
            int(a) == int(x.answer_ids[0]) for a, x in zip(check.answer_ids, inputs, strict=True)
        ]
        out[name] = check.summary() | {"all_heads_accuracy": float(np.mean(still_right))}
    return out


def _engines(model: HookedLVLM, inputs, bases, cfg: AttributionConfig) -> list[AblationEngine]:
    """Each example's engine, built once (the baseline check and the masked runs share it)."""
    return [build_engine(model, x, b, cfg.ablation, cfg.metric, cfg.batch_size)
            for x, b in zip(inputs, bases, strict=True)]


def _attribute(model: HookedLVLM, engines: list[AblationEngine], cfg: AttributionConfig, ids):
    """A head-attribution result over the examples of ``engines``."""
    masks = sample_masks(cfg.n_masks, model.cfg.n_layers, model.cfg.n_heads, cfg.rate, cfg.seed)
    metrics = torch.stack([e.run(masks, progress=False)[0] for e in engines])
    return fit_result(masks, metrics, cfg, model.cfg.model_name, ids, model.attn_kinds())


def ranking_claims(
    model: HookedLVLM, records, refs, cfg: AttributionConfig, out: Path, args
) -> dict[str, Any]:
    """Claims 2-4: per-example ranking comparison, spread over heads, attention weight, layers."""
    inputs, n_all = _prepare(model, records), len(records)
    keep = _correct(model, inputs)
    inputs = [inputs[i] for i in keep]
    bases = [compute_baseline(model, x, cfg.ablation, reference_images=refs) for x in inputs]
    engines = _engines(model, inputs, bases, cfg)
    check = check_baseline(model, engines)
    inputs = [inputs[i] for i in check.kept]
    bases = [bases[i] for i in check.kept]
    engines = [engines[i] for i in check.kept]
    ids = [records[keep[i]].id for i in check.kept]
    result = _attribute(model, engines, cfg, ids)
    rankings = {HEAD_ATTRIBUTION: result.importance.float()}
    rankings |= example_rankings(model, inputs, bases, engines, cfg.ablation, cfg.metric)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    rankings["random"] = random_rankings(n_layers, n_heads, len(inputs), seed=args.seed)
    curves = ranking_curves(engines, rankings, list(range(n_layers * n_heads + 1)), seed=args.seed)
    comp = paired_comparison(curves, seed=args.seed)
    comp.paired.to_csv(out / "paired.csv", index=False)
    comp.heads.to_csv(out / "heads_needed.csv", index=False)
    comp.plot(0.1).savefig(out / "paired_k10.png", dpi=120)
    comp.plot(0.25).savefig(out / "paired_k25.png", dpi=120)
    curves.plot(max_k=32).savefig(out / "curves.png", dpi=120)
    layers = {f"k{int(f * 100)}": layer_distribution(rankings[HEAD_ATTRIBUTION], f, seed=args.seed)
              for f in (0.1, 0.25)}  # fmt: skip
    layers["k10"].plot().savefig(out / "layers_k10.png", dpi=120)
    pooled_layers = layer_distribution(result.pooled_importance, 0.1)

    def agreement(a: str) -> dict[str, Any]:
        rho = [spearman(x, y) for x, y in zip(rankings[a], rankings[HEAD_ATTRIBUTION], strict=True)]
        return bootstrap_ci(rho, seed=args.seed).as_dict()

    return {
        "n_examples": n_all,
        "n_heads": n_layers * n_heads,
        "n_correct": len(keep),
        "baseline_check": check.summary(),
        "fit": {
            "median_example_r": float(result.pearson_r.nanmedian()),
            "pooled_r": result.pooled_r,
        },  # fmt: skip
        "paired": comp.paired.to_dict(orient="records"),
        "heads_needed": comp.heads.to_dict(orient="records"),
        "layers": {
            k: {"counts": v.counts.tolist(), "later_half": v.later_half.as_dict(), "k": v.k}
            for k, v in layers.items()
        },  # fmt: skip
        "pooled_layers_k10": {
            "counts": pooled_layers.counts.tolist(),
            "later_half": pooled_layers.later_half.value,
        },  # fmt: skip
        "spread": {
            k: v.as_dict()
            for k, v in single_head_spread(
                rankings["single-head ablation"], check.effect[check.kept], args.seed
            ).items()
        },
        "attention_vs_attribution": agreement("attention weight"),
        "single_vs_attribution": agreement("single-head ablation"),
        "top_heads_pooled": [f"L{a}H{b}" for a, b in result.top_heads(6)],
    }


def _grid_test(model: HookedLVLM, refs, cfg: AttributionConfig, args, toy: ClaimsToy,
               examples: list[Any], attribute: str) -> dict[str, Any]:  # fmt: skip
    """Head attribution on the grid asked for ``attribute``; the sign-flip table and the
    within-look test of its correctly answered, unflagged examples."""
    prompt = apply_template(attribute_image_prompt(attribute), toy.template)
    inputs = [model.prepare(ex.image, prompt, answers=attribute_answer(ex, attribute))
              for _, _, ex in examples]  # fmt: skip
    keep = _correct(model, inputs)
    inputs = [inputs[i] for i in keep]
    bases = [compute_baseline(model, x, cfg.ablation, reference_images=refs) for x in inputs]
    engines = _engines(model, inputs, bases, cfg)
    check = check_baseline(model, engines)
    use = [keep[i] for i in check.kept]
    result = _attribute(model, [engines[i] for i in check.kept], cfg, [str(i) for i in use])
    classes, looks = [examples[i][0] for i in use], [str(examples[i][1]) for i in use]
    sem = semantic_similarity(result, classes, looks, seed=args.seed)
    return {"table": sem.to_frame().to_dict(orient="records"), "n_examples": len(examples),
            "n_used": len(use), "attribute": attribute,
            "within_look": within_look_test(result, classes, looks, seed=args.seed)}  # fmt: skip


def semantics_claim(
    model: HookedLVLM, refs, cfg: AttributionConfig, args, toy: ClaimsToy = TOYS["science"]
) -> dict[str, Any]:
    """Claim 5: same class / other look vs same look / other class, on a class x look grid.

    ``toy.grid`` ``"v1"``: one image per cell of :data:`LOOKS`; ``"v2"``: ``args.per_cell``
    jittered images per cell of looks differing only in unqueried attributes
    (:func:`~lvlm_lens.run.claims_semantics.semantic_grid`). Both get the sign-flip table and
    the test with classes permuted within looks (``within_look``), on the shape question.
    The v2 grid is also asked its size (``shared_answer``: every image's answer is
    ``large``), so that a class effect there cannot come from the answer token itself.
    """
    if toy.grid == "v2":
        examples = semantic_grid(args.per_cell, args.seed + 77)
    else:
        rng = np.random.default_rng(args.seed + 77)
        examples = [
            (c, k, render_example(c, look, rng)) for k, look in enumerate(LOOKS) for c in CLASSES
        ]
    out = _grid_test(model, refs, cfg, args, toy, examples, "shape") | {"grid": toy.grid}
    if toy.grid == "v2":
        out["shared_answer"] = _grid_test(model, refs, cfg, args, toy, examples, "size")
    return out


def _attribute_inputs(model: HookedLVLM, n: int, seed: int, attribute: str, toy: ClaimsToy):
    """The correctly answered examples of one question type, as one batch, and their records."""
    recs = toy.records(attribute_records(n, seed, attributes=(attribute,)))
    inp = model.prepare([r.image for r in recs], [r.prompt for r in recs], [r.answer for r in recs])
    right = _correct_in_batch(model, inp)
    return inp.select(right), [recs[i] for i in right]


def flow_claims(
    model: HookedLVLM, n: int, seed: int, window: int, out: Path, toy: ClaimsToy = TOYS["science"]
) -> dict[str, Any]:
    """Claim 6.1: when question and image information reach the role and final tokens."""
    frames, all_layers, n_correct = [], {}, {}
    layers = list(range(model.cfg.n_layers))
    for attribute in ATTRIBUTES:
        inp, _ = _attribute_inputs(model, n, seed, attribute, toy)
        n_correct[attribute] = len(inp)
        res = token_flow(model, inp, FlowConfig(window=window, progress=False))
        frames.append(res.frame.assign(example=res.frame.example + 1000 * len(frames),
                                       question=attribute))  # fmt: skip
        all_layers[attribute] = {
            f"{src}->final": float(knockout_effect(model, inp, src, "final", layers).mean())
            for src in ("question", "image")
        }
    flow = type(res)(pd.concat(frames, ignore_index=True), res.window)
    flow.frame.to_csv(out / "flow.csv", index=False)
    flow.plot().savefig(out / "flow.png", dpi=120)
    summary = flow.summary()
    weight = (-summary["mean"]).clip(lower=0)
    centre = (weight * summary.layer).groupby(summary.edge).sum() / weight.groupby(
        summary.edge
    ).sum()
    return {
        "window": window,
        "n_correct": n_correct,
        "summary": summary.round(4).to_dict(orient="records"),
        "effect_centre_of_mass": centre.round(2).to_dict(),
        "all_layers": all_layers,
    }


def token_claim(
    model: HookedLVLM, n: int, seed: int, refs_inputs, toy: ClaimsToy = TOYS["science"]
) -> dict[str, Any]:
    """Claim 6.2: object vs as many background image tokens, per question type."""
    mean = mean_image_baseline(model, refs_inputs)
    out = {}
    for attribute in ATTRIBUTES:
        inp, recs = _attribute_inputs(model, n, seed, attribute, toy)
        res = region_ablation(model, inp, [r.mask for r in recs], baseline=mean, seed=seed,
                              progress=False)  # fmt: skip
        out[attribute] = res.summary(seed).to_dict(orient="records")
    return out


def _measure(
    args: argparse.Namespace, out: Path, folder: str | None, toy: ClaimsToy = TOYS["science"]
) -> dict[str, Any]:
    """Every section not in ``args.skip`` on one checkpoint of ``toy``; writes
    ``out/claims.json`` (with the toy's name and the claims testable on it)."""
    out.mkdir(parents=True, exist_ok=True)
    model = (
        HookedLVLM.from_pretrained(folder, device="cpu")
        if folder
        else load_toy(device="cpu", name=toy.name)
    )
    refs = [r.image for r in synthetic_records(16, args.data_seed + 1)]
    cfg = AttributionConfig(n_masks=args.n_masks, seed=args.seed,
                            ablation=HeadAblation(baseline=args.baseline))  # fmt: skip
    shape = toy.records(attribute_records(args.n_examples, args.data_seed, attributes=("shape",)))
    n = args.n_examples
    res = {"args": vars(args) | {"model": folder, "toy": toy.name}, "toy": toy.name,
           "testable": toy.testable, "seconds": {}}  # fmt: skip
    steps = {
        "baselines": lambda: {
            toy.name: baseline_table(
                model, toy.records(attribute_records(n, args.data_seed)), refs, cfg.metric
            ),
            "bundled": baseline_table(load_toy(device="cpu"), synthetic_records(n, args.data_seed),
                                      refs, cfg.metric),
        },  # fmt: skip
        "rankings": lambda: ranking_claims(model, shape, refs, cfg, out, args),
        "semantics": lambda: semantics_claim(model, refs, cfg, args, toy),
        "flow": lambda: flow_claims(model, n, args.data_seed, args.window, out, toy),
        "tokens": lambda: token_claim(model, n, args.data_seed,
                                      _prepare(model, toy.records(
                                          synthetic_records(16, args.data_seed + 1))), toy),
    }  # fmt: skip
    for name, step in steps.items():
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        res[name] = step()
        res["seconds"][name] = round(time.perf_counter() - t0, 1)
        (out / "claims.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
        print(f"[{name}] done in {res['seconds'][name]:.0f}s", flush=True)
    return res


def _seed_name(folder: str) -> str:
    record = Path(folder) / "training.json"
    if not record.is_file():
        raise ValueError(f"--seeds: {folder} has no training.json; pass trained toy folders")
    return f"seed{json.loads(record.read_text())['seed']}"


def run_seeds(
    args: argparse.Namespace, out: Path, toy: ClaimsToy = TOYS["science"]
) -> dict[str, Any]:
    """Every claim on each ``--seeds`` checkpoint of ``toy``, then the across-seeds table.

    Writes ``out/<seed>/`` per checkpoint, ``out/claims.json`` (the table only: no timings or
    paths, so a rerun gives the same bytes), ``out/seeds.md`` and, with ``--docs``, the seeds
    table of that file (the toy's own markers, :func:`~lvlm_lens.run.claims_toys.toy_markers`).
    """
    names = [_seed_name(f) for f in args.seeds]
    results = [_measure(args, out / name, f, toy)
               for name, f in zip(names, args.seeds, strict=True)]  # fmt: skip
    table = toy_table(aggregate(names, results), toy, names, results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "claims.json").write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    block = markdown(table) + "\n" + toy_note(toy)
    (out / "seeds.md").write_text(block)
    if args.docs:
        docs = Path(args.docs)
        docs.write_text(replace_toy_block(docs.read_text(), block, toy))
    for row in table["primary"]:
        print(f"claim {row['claim']}: {row['verdict']}", flush=True)
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point: parse flags, measure, write ``claims.json`` and print a summary."""
    p = argparse.ArgumentParser("python -m lvlm_lens.run.claims", description=__doc__)
    p.add_argument("--out", default="runs/claims", help="output folder")
    p.add_argument("--model", help="checkpoint folder (default: the shipped science toy)")
    p.add_argument("--toy", choices=tuple(TOYS), help="which toy the checkpoints are (default: "
                   "their training.json preset, else science): prompts, claim-5 grid, testable "
                   "claims (run/claims_toys.py)")  # fmt: skip
    p.add_argument("--per-cell", type=int, default=3,
                   help="science_v2: jittered images per class x look cell of claim 5")  # fmt: skip
    p.add_argument("--seeds", nargs="+", help="checkpoint folders, one per training seed: "
                   "measure each and write the across-seeds table (run/seeds.py)")  # fmt: skip
    p.add_argument("--docs", help="with --seeds: regenerate the seeds table of this file")
    p.add_argument("--n-examples", type=int, default=24, help="examples per measurement")
    p.add_argument("--data-seed", type=int, default=1000, help="seed of the synthetic examples")
    p.add_argument("--n-masks", type=int, default=1000, help="head-attribution masks per example")
    p.add_argument("--baseline", default=RunOptions().attribution.ablation.baseline,
                   choices=BASELINES, help="head-ablation baseline (the CLI's)")  # fmt: skip
    p.add_argument("--window", type=int, default=3, help="knockout window (layers)")
    p.add_argument("--seed", type=int, default=0, help="seed of masks, bootstrap, permutations")
    p.add_argument("--skip", nargs="*", default=[], help="sections to skip",
                   choices=["baselines", "rankings", "semantics", "flow", "tokens"])  # fmt: skip
    args = p.parse_args(argv)
    if args.docs and not args.seeds:
        p.error("--docs needs --seeds")
    if args.per_cell < 1:
        p.error(f"--per-cell must be >= 1, got {args.per_cell}")
    try:
        toy = resolve_toy(args.toy, args.seeds or ([args.model] if args.model else []))
    except ValueError as err:
        p.error(str(err))
    args.toy = toy.name
    torch.set_num_threads(1)
    if args.seeds:
        return run_seeds(args, Path(args.out), toy)
    return _measure(args, Path(args.out), args.model, toy)


if __name__ == "__main__":
    main()
