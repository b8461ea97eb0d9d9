"""The ``lvlm-lens`` command line: ``attribute``, ``knockout``, ``report``, ``toy train``."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
from pathlib import Path

from lvlm_lens.attribution.head_attribution import AttributionConfig
from lvlm_lens.errors import OptionError, RunError
from lvlm_lens.interventions.ablation import BASELINES, SCOPES, HeadAblation
from lvlm_lens.interventions.metrics import METRICS
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.threads import SMALL_MODEL_PARAMS
from lvlm_lens.toy.train_cli import add_train_arguments, train_from_args

#: Environment variable that, set (not 0), makes every error show its traceback.
DEBUG_ENV = "LVLM_LENS_DEBUG"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that ends each option with its default, where it has one (switches have none; an
    option without a value says what it defaults to in its own words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is argparse.SUPPRESS or action.nargs == 0:
            return action.help or ""
        return super()._get_help_string(action)


THREADS_HELP = (
    "CPU threads of torch. Default: 1 for a model on the CPU with fewer than "
    f"{SMALL_MODEL_PARAMS / 1e6:g}M parameters (the bundled toy LVLM), whose tiny operations "
    "run 10-40x slower with more threads while other jobs use the cores; else torch's default "
    "(one per core, or OMP_NUM_THREADS) capped at the cores the 1-minute load average leaves "
    "free"
)


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--model", help="checkpoint folder or hub id (default: the bundled toy LVLM)")
    p.add_argument(
        "--data", help="folder with images + data.csv/data.jsonl (default: a synthetic set)"
    )
    p.add_argument(
        "--n-examples",
        dest="n_examples",
        metavar="N",
        type=int,
        default=24,
        help="size of the synthetic set; with --data, the first N rows (0 = all)",
    )
    p.add_argument("--data-seed", type=int, default=1000, help="seed of the synthetic set")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA if available)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights and activations (float16: GPU only)",
    )
    p.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    p.add_argument("--out", default=out, help="output folder")


def _attribute_arguments(a: argparse.ArgumentParser) -> None:
    d = RunOptions().attribution  # the CLI's defaults are RunOptions' (baseline: blank)
    h = d.ablation
    a.add_argument("--num-masks", dest="n_masks", metavar="N", type=int, default=d.n_masks,
                   help="random masks per example")  # fmt: skip
    a.add_argument("--ablation-rate", dest="rate", metavar="P", type=float, default=d.rate,
                   help="probability that a head is ablated in a mask")  # fmt: skip
    a.add_argument("--baseline", default=h.baseline, choices=BASELINES,
                   help="what an ablated head's image keys/values are replaced with")  # fmt: skip
    a.add_argument("--baseline-image", help="image file for --baseline image")
    a.add_argument("--n-reference", type=int, default=RunOptions.n_reference,
                   help="images averaged by --baseline mean")  # fmt: skip
    a.add_argument("--scope", default=h.scope, choices=SCOPES,
                   help="queries that see the baseline (text: those after the image)")  # fmt: skip
    a.add_argument("--source", default=h.source,
                   help="token group whose keys/values are replaced")  # fmt: skip
    a.add_argument("--metric", default=d.metric, choices=sorted(METRICS),
                   help="what is measured on the answer token")  # fmt: skip
    a.add_argument("--method", default=d.method, choices=["ridge", "ols", "lasso"],
                   help="regressor of the metric on the masks")  # fmt: skip
    a.add_argument("--seed", type=int, default=d.seed, help="seed of the masks and the fit split")
    a.add_argument("--batch-size", type=int, default=d.batch_size, help="masks per forward pass")
    a.add_argument("--chunk-masks", type=int, default=RunOptions.chunk_masks,
                   help="masks per result file (what a killed run can lose)")  # fmt: skip
    a.add_argument("--keep-wrong", action="store_true",
                   help="keep examples the model answers wrongly (default: excluded)")  # fmt: skip
    a.add_argument("--answer-rule", default="single", choices=["single", "first"],
                   help="multi-token answers: refuse them, or score their first token")  # fmt: skip
    a.add_argument("--no-rankings", dest="rankings", action="store_false",
                   help="skip the comparison with other head rankings")  # fmt: skip
    a.add_argument("--n-random", type=int, default=RunOptions.n_random,
                   help="random rankings in the random band")  # fmt: skip
    a.add_argument("--overwrite", action="store_true", help="discard a run with other options")


def _at_least_one(value: str) -> int:
    """An integer >= 1 (argparse names the flag when this raises)."""
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    fmt = HelpFormatter
    parser = argparse.ArgumentParser("lvlm-lens", description=__doc__, formatter_class=fmt)
    debug_help = f"show the traceback of every error (or set {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser(
        "attribute",
        help="head attribution over a dataset, with report",
        description="Head attribution (random head-ablation masks -> linear model) "
        "over a dataset; resumable; shards under torchrun / SLURM.",
        formatter_class=fmt,
    )
    _common(a, "runs/attribute")
    _attribute_arguments(a)
    k = sub.add_parser(
        "knockout",
        help="attention knockout between token groups, per layer window",
        formatter_class=fmt,
    )
    _common(k, "runs/knockout")
    k.add_argument("--window", type=_at_least_one, default=9, help="layers per knockout window")
    k.add_argument("--metric", default="prob", choices=sorted(METRICS),
                   help="answer metric (relative change for prob)")
    r = sub.add_parser(
        "report", help="re-render the report of an attribute run", formatter_class=fmt
    )
    r.add_argument("--out", required=True, help="folder of a finished `attribute` run")
    t = sub.add_parser("toy", help="the bundled toy LVLM", formatter_class=fmt)
    tsub = t.add_subparsers(dest="toy_command", required=True)
    tt = tsub.add_parser(
        "train", help="train the toy LVLM (seeded; a few minutes on a CPU)", formatter_class=fmt
    )
    add_train_arguments(tt)
    return parser


def _fields(cls: type, args: argparse.Namespace) -> dict:
    """The dataclass fields of ``cls`` that the command line sets (flag dest = field name)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """``RunOptions`` of an ``attribute`` or ``knockout`` command line."""
    if args.command != "attribute":
        return RunOptions(**_fields(RunOptions, args))
    ablation = HeadAblation(**_fields(HeadAblation, args))
    cfg = AttributionConfig(**_fields(AttributionConfig, args), ablation=ablation)
    return RunOptions(**_fields(RunOptions, args), attribution=cfg)


def flag_of(parser: argparse.ArgumentParser, command: str, field: str) -> str:
    """The flag that sets option ``field`` in ``command`` (the field itself if none does)."""
    for action in parser._subparsers._group_actions[0].choices[command]._actions:
        if action.dest == field and action.option_strings:
            return action.option_strings[0]
    return field


def _run(args: argparse.Namespace) -> None:
    if args.command == "attribute":
        from lvlm_lens.run.job import run_job, terminal_summary

        outcome = run_job(options_from_args(args), overwrite=args.overwrite)
        if outcome is not None:
            print(terminal_summary(outcome))
    elif args.command == "knockout":
        from lvlm_lens.run.knockout_sweep import run_knockout_sweep

        path = run_knockout_sweep(options_from_args(args), args.window, args.metric)
        print(f"results: {path}")
    elif args.command == "report":
        from lvlm_lens.run.rerender import rerender

        print(f"report: {rerender(Path(args.out))}")
    else:
        print(json.dumps(train_from_args(args), indent=2, default=str))


def user_message(
    err: BaseException, parser: argparse.ArgumentParser, command: str, out: str | None = None
) -> str | None:
    """The one-line message of an error the user can cause and fix; ``None`` for a bug
    (``out``: the run's folder, named when a full disk does not say which file)."""
    if isinstance(err, OptionError):  # name the flag, not the dataclass field
        return err.named(flag_of(parser, command, err.field))
    if isinstance(err, (ValueError, FileNotFoundError)):  # bad input
        return str(err)
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    if full or "No space left on device" in str(err):  # safetensors: its own error type
        where = getattr(err, "filename", None) or out or "a run file"
        return (f"{where}: no space left on the device: free some and run the same command "
                "again (finished files are kept, none half-written)")
    if isinstance(err, RunError):  # the run's own refusals: a file or folder, what to do
        return str(err)
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lvlm-lens``; returns 2 on bad input, with a one-line message
    (``--debug`` or ``LVLM_LENS_DEBUG=1``: with its traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        _run(args)
    except Exception as err:
        message = user_message(err, parser, args.command, getattr(args, "out", None))
        if debug or message is None:
            raise
    else:
        return 0
    print(f"lvlm-lens: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
