"""Train the toy LVLM from scratch on procedurally generated synthetic data.

Every step draws a fresh batch (:mod:`lvlm_lens.data`, seeded by ``(seed, step)``): a share of
image prompts (name the main object of the image) and a share of text-only prompts (name the
object described in words). The loss is the cross-entropy of the answer token at the final
prompt position only. AdamW, one-cycle LR, gradient clipping at 1.

Usage::

    python -m lvlm_lens.toy.train --out runs/toy --steps 1500 --seed 0
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import LlavaForConditionalGeneration

from lvlm_lens.toy import (
    TOY_GRID,
    TOY_IMAGE_SIZE,
    build_toy_processor,
    evaluate_attributes,
    evaluate_toy,
    toy_config,
)
from lvlm_lens.toy.recipe import (
    PRESETS,
    ToyArchitecture,
    ToyRecipe,
    TrainLog,
    log_line,
    recipe_template,
    sample_batch,
)
from lvlm_lens.toy.templates import apply_template
from lvlm_lens.toy.warm_start import (
    has_checkpoint,
    init_vision_,
    warm_start_folder,
    warm_start_vision_,
)

#: Salt of the training streams' seed sequence, so training batches never coincide with
#: ``generate_dataset(n, seed)`` (evaluation sets) for any seed.
_TRAIN_STREAM = 0x70790
#: Salt of the dropout stream (torch's global generator while training), seeded by ``seed``.
_DROPOUT_STREAM = 0xD209


def dropout_seed(seed: int) -> int:
    """The torch seed of the dropout stream of a training run of ``seed`` (64 bits)."""
    return int(np.random.SeedSequence([seed, _DROPOUT_STREAM]).generate_state(1, np.uint64)[0])


def _pixel_values(images: list[Any], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """CLIP normalisation of 48-px RGB images (the processor's resize and crop are no-ops)."""
    arr = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images]))
    arr = arr.permute(0, 3, 1, 2) / 255.0
    return (arr - mean[:, None, None]) / std[:, None, None]


def _right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _answer_loss(
    model: LlavaForConditionalGeneration,
    ids: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    pixel_values: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer-token cross-entropy and whether each row's argmax is right (last token)."""
    hidden = model.model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
    last = mask.sum(-1) - 1
    final = hidden.last_hidden_state[torch.arange(len(ids)), last]
    logits = model.lm_head(final).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return loss, logits.argmax(-1) == targets


def train_toy(
    out_dir: str | Path,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    *,
    preset: str = "bundled",
    architecture: ToyArchitecture | None = None,
    text_fraction: float | None = None,
    weight_decay: float | None = None,
    warmup_frac: float | None = None,
    sincos_positions: bool | None = None,
    patch_init_std: float | None = None,
    eval_n: int = 500,
    eval_seed: int = 999,
    log_every: int = 100,
    num_threads: int | None = 1,
    verbose: bool = True,
    vision_dir: str | Path | None = None,
    vision_steps: int | None = None,
) -> dict[str, Any]:
    """Train a toy LVLM from scratch and save it as a HF checkpoint folder.

    Every setting left ``None`` comes from the preset (:data:`~lvlm_lens.toy.recipe.PRESETS`):
    ``"bundled"`` is the recipe of the shipped 4-layer toy, ``"science"`` the one of the
    8-layer multi-attribute toy, ``"science_v2"`` its 12 x 16-head version with four role
    tokens in every prompt (``docs/toy_model.md``).

    Args:
        out_dir: Folder to write (config, ``model.safetensors``, tokenizer, image processor,
            chat template, ``training.json``); created if missing.
        seed: Seed of the weight init, the data stream, the dropout stream and the vision
            warm start (same seed, same model, given the same library versions and thread
            count; the caller's torch generator is left as it was). The science presets'
            towers start from the bundled recipe trained with the same seed
            (:mod:`lvlm_lens.toy.warm_start`).
        steps: Optimizer steps; each sees a fresh batch.
        batch_size: Examples per step, image and text prompts together.
        lr: Peak learning rate of the one-cycle schedule.
        preset: ``"bundled"``, ``"science"`` or ``"science_v2"``.
        architecture: Sizes of the language model (layers, heads, width, attention dropout).
        text_fraction: Share of each batch asked as text-only prompts.
        weight_decay: AdamW weight decay (weights only; not biases, norms or embeddings
            of rank 1).
        warmup_frac: Share of the steps spent warming up (one-cycle ``pct_start``).
        sincos_positions: Start the vision position embeddings from a 2-D sine/cosine
            pattern instead of HF's random init (:func:`~lvlm_lens.toy.warm_start.init_vision_`).
        patch_init_std: Standard deviation of the initial patch embedding weights.
        eval_n: Held-out examples evaluated at the end (0 to skip).
        eval_seed: Seed of that held-out set.
        log_every: Print the running loss / accuracy every this many steps (when ``verbose``).
        num_threads: Torch threads during training (restored afterwards); ``None`` leaves the
            setting alone. One thread is the default: the model is too small to gain much
            from a second one, and on a shared CPU extra threads often slow it down.
        verbose: Print progress.
        vision_dir: The warm start's checkpoint folder; ``None``: the shipped toy for seed 0,
            else ``<out_dir's parent>/<vision_init>_seed<seed>``. Trained first (with the
            same seed) when it holds no checkpoint.
        vision_steps: Steps of that warm-start training (default: its preset's).

    Returns:
        A summary (also saved as ``training.json``): settings, wall time, final loss, a loss /
        training-accuracy history and, if ``eval_n``, the held-out accuracy (``image_acc`` /
        ``text_acc``; per question type for the science preset).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(PRESETS)}")
    recipe = PRESETS[preset].with_overrides(
        architecture=architecture,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        text_fraction=text_fraction,
        weight_decay=weight_decay,
        warmup_frac=warmup_frac,
        sincos_positions=sincos_positions,
        patch_init_std=patch_init_std,
    )
    out_dir, folder = Path(out_dir), None
    if recipe.vision_init:
        folder = (
            Path(vision_dir)
            if vision_dir is not None
            else warm_start_folder(recipe.vision_init, seed, out_dir.parent)
        )
        if not has_checkpoint(folder):
            if verbose:
                print(f"training the vision warm start of seed {seed} into {folder}", flush=True)
            train_toy(folder, seed=seed, steps=vision_steps, preset=recipe.vision_init,
                      log_every=log_every, num_threads=num_threads, verbose=verbose)  # fmt: skip
    previous_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        # Dropout draws from torch's global generator: seed it from ``seed`` for the run, and
        # give the caller's generator back untouched afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(dropout_seed(seed))
            return _train(
                out_dir, seed, preset, recipe, folder, eval_n, eval_seed, log_every, verbose
            )
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    out_dir: Path,
    seed: int,
    preset: str,
    recipe: ToyRecipe,
    vision_folder: Path | None,
    eval_n: int,
    eval_seed: int,
    log_every: int,
    verbose: bool,
) -> dict[str, Any]:
    steps, batch_size, lr = recipe.steps, recipe.batch_size, recipe.lr
    n_text = int(round(batch_size * recipe.text_fraction))
    n_image = batch_size - n_text
    threads = torch.get_num_threads()

    template = recipe_template(recipe)
    processor = build_toy_processor(template)
    tokenizer = processor.tokenizer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(
            toy_config(tokenizer, **recipe.architecture.text_config())
        )
        init_vision_(
            model, patch_std=recipe.patch_init_std, sincos_positions=recipe.sincos_positions
        )
        if vision_folder is not None:
            warm_start_vision_(model, vision_folder)
    model.set_attn_implementation("sdpa")  # training speed; the saved model loads as eager
    model.train()

    # Image prompts: the placeholder expanded to one <image> per patch, as the processor does.
    image_tokens = "<image>" * (TOY_GRID * TOY_GRID)
    mean = torch.tensor(processor.image_processor.image_mean, dtype=torch.float32)
    std = torch.tensor(processor.image_processor.image_std, dtype=torch.float32)
    pad_id = tokenizer.pad_token_id

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps, pct_start=recipe.warmup_frac, anneal_strategy="cos"
    )

    start = time.perf_counter()
    window = TrainLog()
    history = []
    loss_value = math.nan
    for step in range(steps):
        rng = np.random.default_rng([seed, step, _TRAIN_STREAM])
        batch = sample_batch(recipe, rng, batch_size, n_image, TOY_IMAGE_SIZE)
        batch.prompts = [apply_template(p, template) for p in batch.prompts]
        targets = torch.tensor(tokenizer.convert_tokens_to_ids(batch.answers))
        rows = tokenizer(
            [p.replace("<image>", image_tokens) for p in batch.prompts[:n_image]]
        ).input_ids
        ids, mask = _right_padded(rows, pad_id)
        pixels = _pixel_values([ex.image for ex in batch.examples[:n_image]], mean, std)
        loss, hits = _answer_loss(model, ids, mask, targets[:n_image], pixels)
        if n_text:
            ids, mask = _right_padded(tokenizer(batch.prompts[n_image:]).input_ids, pad_id)
            txt_loss, txt_hits = _answer_loss(model, ids, mask, targets[n_image:], None)
            loss, hits = loss + txt_loss, torch.cat([hits, txt_hits])
        loss = loss / batch_size

        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step_lr = sched.get_last_lr()[0]
        sched.step()

        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}")
        window.add(loss_value, batch.kinds, hits.tolist())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            entry = window.entry(step + 1, step_lr, time.perf_counter() - start, recipe.task)
            history.append(entry)
            if verbose:
                print(log_line(entry), flush=True)
            window = TrainLog()
    wall = time.perf_counter() - start

    model.eval()
    model.set_attn_implementation("eager")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    summary: dict[str, Any] = {
        "seed": seed,
        "preset": preset,
        "task": recipe.task,
        "architecture": asdict(recipe.architecture),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "text_fraction": recipe.text_fraction,
        "weight_decay": recipe.weight_decay,
        "warmup_frac": recipe.warmup_frac,
        "sincos_positions": recipe.sincos_positions,
        "patch_init_std": recipe.patch_init_std,
        "attribute_weights": list(recipe.attribute_weights),
        "vision_init": recipe.vision_init,
        "template": template,
        "vision_init_seed": None
        if vision_folder is None
        else json.loads((vision_folder / "training.json").read_text())["seed"],
        "train_seconds": round(wall, 1),
        "torch_threads": threads,
        "final_loss": loss_value,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "history": history,
    }
    if eval_n:
        from lvlm_lens.model.hooked_lvlm import HookedLVLM

        hooked = HookedLVLM.from_pretrained(out_dir, device="cpu")
        if recipe.task == "shape":
            summary["eval"] = evaluate_toy(hooked, eval_n, eval_seed)
        else:
            summary["eval"] = evaluate_attributes(hooked, eval_n, eval_seed, template=template)
        if verbose:
            ev = summary["eval"]
            accs = ev.get("acc", {"image": ev["image_acc"], "text": ev["text_acc"]})
            accs = ", ".join(f"{k} {v:.3f}" for k, v in accs.items())
            print(f"held-out (n={ev['n']}, seed={ev['seed']}): {accs}", flush=True)
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    if verbose:
        print(f"saved {out_dir} after {wall:.0f}s of training", flush=True)
    return summary


if __name__ == "__main__":  # the flags live in train_cli (this module is its library)
    from lvlm_lens.toy.train_cli import main

    main()
