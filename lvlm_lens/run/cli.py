"""The ``lvlm-lens`` command line: ``attribute``, ``knockout``, ``report``, ``toy train``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lvlm_lens.attribution.head_attribution import AttributionConfig
from lvlm_lens.interventions.ablation import BASELINES, SCOPES, HeadAblation
from lvlm_lens.run.options import RunOptions
from lvlm_lens.toy.train import add_train_arguments, train_from_args


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--model", help="checkpoint folder or hub id (default: the bundled toy LVLM)")
    p.add_argument("--data", help="folder with images + data.csv/data.jsonl (default: synthetic)")
    p.add_argument("--n-examples", type=int, default=24, help="synthetic set size / cap (0 = all)")
    p.add_argument("--data-seed", type=int, default=1000, help="seed of the synthetic set")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", default=out, help="output folder")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser("lvlm-lens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser(
        "attribute",
        help="head attribution over a dataset, with report",
        description="Head attribution (random head-ablation masks -> linear model) "
        "over a dataset; resumable; shards under torchrun / SLURM.",
    )
    _common(a, "runs/attribute")
    d = RunOptions().attribution  # the CLI's defaults are RunOptions'
    h = d.ablation
    a.add_argument("--num-masks", type=int, default=d.n_masks, help="random masks per example")
    a.add_argument("--ablation-rate", type=float, default=d.rate, help="P(head ablated) in a mask")
    a.add_argument("--baseline", default=h.baseline, choices=BASELINES, help="baseline K/V")
    a.add_argument("--baseline-image", help="image file for --baseline image")
    a.add_argument("--n-reference", type=int, default=16, help="images averaged by --baseline mean")
    a.add_argument("--scope", default=h.scope, choices=SCOPES, help="queries that see the baseline")
    a.add_argument("--source", default=h.source, help="token group whose K/V are replaced")
    a.add_argument("--metric", default=d.metric, choices=["logit", "logit_diff", "logprob", "prob"])
    a.add_argument("--method", default=d.method, choices=["ridge", "ols", "lasso"])
    a.add_argument("--seed", type=int, default=d.seed, help="seed of the masks and the fit split")
    a.add_argument("--batch-size", type=int, default=d.batch_size, help="masks per forward pass")
    a.add_argument("--chunk-masks", type=int, default=256, help="masks per result file")
    a.add_argument("--keep-wrong", action="store_true", help="keep wrongly answered examples")
    a.add_argument("--answer-rule", default="single", choices=["single", "first"])
    a.add_argument("--no-rankings", action="store_true", help="skip the ranking comparison")
    a.add_argument("--n-random", type=int, default=10, help="random rankings in the random band")
    a.add_argument("--overwrite", action="store_true", help="discard a run with other options")
    k = sub.add_parser("knockout", help="attention knockout between token groups, per layer window")
    _common(k, "runs/knockout")
    k.add_argument("--window", type=int, default=9, help="layers per knockout window")
    k.add_argument("--metric", default="prob", help="answer metric (relative change for prob)")
    r = sub.add_parser("report", help="re-render the report of an attribute run")
    r.add_argument("--out", required=True, help="folder of a finished `attribute` run")
    t = sub.add_parser("toy", help="the bundled toy LVLM")
    tsub = t.add_subparsers(dest="toy_command", required=True)
    tt = tsub.add_parser("train", help="train the toy LVLM (seeded; a few minutes on a CPU)")
    add_train_arguments(tt)
    return parser


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """``RunOptions`` of an ``attribute`` or ``knockout`` command line."""
    common = dict(
        out=args.out,
        model=args.model,
        data=args.data,
        n_examples=args.n_examples,
        data_seed=args.data_seed,
        device=args.device,
        dtype=args.dtype,
    )
    if args.command != "attribute":
        return RunOptions(**common)
    ablation = HeadAblation(baseline=args.baseline, scope=args.scope, source=args.source)
    cfg = AttributionConfig(
        n_masks=args.num_masks,
        rate=args.ablation_rate,
        seed=args.seed,
        metric=args.metric,
        method=args.method,
        batch_size=args.batch_size,
        ablation=ablation,
    )
    return RunOptions(
        **common,
        n_reference=args.n_reference,
        baseline_image=args.baseline_image,
        keep_wrong=args.keep_wrong,
        answer_rule=args.answer_rule,
        chunk_masks=args.chunk_masks,
        rankings=not args.no_rankings,
        n_random=args.n_random,
        attribution=cfg,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lvlm-lens``."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "attribute":
            from lvlm_lens.run.job import attribute

            report = attribute(options_from_args(args), overwrite=args.overwrite)
            if report is not None:
                print(f"report: {report}")
        elif args.command == "knockout":
            from lvlm_lens.run.knockout_sweep import run_knockout_sweep

            path = run_knockout_sweep(options_from_args(args), args.window, args.metric)
            print(f"results: {path}")
        elif args.command == "report":
            from lvlm_lens.run.rerender import rerender

            print(f"report: {rerender(Path(args.out))}")
        else:
            print(json.dumps(train_from_args(args), indent=2, default=str))
    except ValueError as err:  # bad input: a clear message, no traceback
        print(f"lvlm-lens: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
