"""The command line of toy training: ``python -m lvlm_lens.toy.train`` and ``lvlm-lens toy train``.

Flags map onto :func:`lvlm_lens.toy.train.train_toy`; recipe flags left out take the
``--preset`` value (:data:`~lvlm_lens.toy.recipe.PRESETS`).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from lvlm_lens.toy.recipe import PRESETS
from lvlm_lens.toy.train import train_toy


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Training flags shared by ``python -m lvlm_lens.toy.train`` and ``lvlm-lens toy train``.

    Recipe flags left out take the ``--preset`` value (:data:`~lvlm_lens.toy.recipe.PRESETS`).
    """
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    parser.add_argument(
        "--preset", default="bundled", choices=tuple(PRESETS),
        help="recipe: the bundled 4-layer shape toy, the 8-layer multi-attribute science toy or "
        "its 12 x 16-head v2 with four role tokens per prompt",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the weights, the data, dropout and the vision warm start",
    )  # fmt: skip
    parser.add_argument(
        "--vision-dir",
        help="checkpoint whose vision tower starts the run (default: the shipped toy for seed "
        "0, else <out>/../<vision_init>_seed<N>, trained first if missing)",
    )
    parser.add_argument("--vision-steps", type=int, help="steps of that warm-start training")
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="examples per step")
    parser.add_argument("--lr", type=float, help="peak one-cycle learning rate")
    parser.add_argument("--text-fraction", type=float, help="share of text-only prompts per batch")
    parser.add_argument("--layers", type=int, help="decoder layers")
    parser.add_argument("--heads", type=int, help="attention heads per layer")
    parser.add_argument("--d-model", type=int, help="residual width (head dim = d_model / heads)")
    parser.add_argument("--d-mlp", type=int, help="MLP width")
    parser.add_argument(
        "--attention-dropout", type=float, help="dropout on attention probabilities (training)"
    )
    parser.add_argument("--eval-n", type=int, default=500, help="held-out examples (0: skip)")
    parser.add_argument("--eval-seed", type=int, default=999, help="seed of the held-out set")
    parser.add_argument("--log-every", type=int, default=100, help="steps between log lines")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads while training (0: leave as is)"
    )


def train_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`train_toy` with the flags of :func:`add_train_arguments`."""
    base = PRESETS[args.preset].architecture
    sizes = {
        "layers": args.layers,
        "heads": args.heads,
        "d_model": args.d_model,
        "d_mlp": args.d_mlp,
        "attention_dropout": args.attention_dropout,
    }
    architecture = replace(base, **{k: v for k, v in sizes.items() if v is not None})
    return train_toy(
        args.out,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        preset=args.preset,
        architecture=architecture,
        text_fraction=args.text_fraction,
        eval_n=args.eval_n,
        eval_seed=args.eval_seed,
        log_every=args.log_every,
        num_threads=args.threads,
        vision_dir=args.vision_dir,
        vision_steps=args.vision_steps,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``python -m lvlm_lens.toy.train``."""
    parser = argparse.ArgumentParser(
        prog="python -m lvlm_lens.toy.train", description="Train a toy LVLM from scratch."
    )
    add_train_arguments(parser)
    return train_from_args(parser.parse_args(argv))
