"""The masked runs of the main job, sharded across processes and resumable chunk by chunk.

Each process runs the examples ``i % world == rank`` (:mod:`lvlm_lens.run.distributed`): the
model's prediction, then the metric under every random mask, one chunk of masks at a time
(files in :mod:`lvlm_lens.run.store`). A run killed at any moment and started again with the
same options skips what exists and ends with the same result as an uninterrupted run; rank 0
merges the chunks and fits the attribution.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lvlm_lens.attribution.head_attribution import build_engine, check_config, fit_result
from lvlm_lens.attribution.mask_source import MaskSource
from lvlm_lens.errors import RunError
from lvlm_lens.interventions.ablation import (
    BaselineKV,
    compute_baseline,
    resizes_stand_ins,
    source_mask,
)
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.model import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.run.distributed import Shard, current_shard
from lvlm_lens.run.examples import prepare_record
from lvlm_lens.run.fingerprint import row_key
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.outcome import AttributedExample, AttributionRun, attributed_examples
from lvlm_lens.run.preflight import check_mask_memory
from lvlm_lens.run.store import (
    check_out_dir,
    chunk_done,
    chunk_fingerprint,
    forget_example,
    load_prediction,
    options_key,
    prediction_path,
    read_metrics,
    read_predictions,
    save_chunk,
    save_prediction,
    wait_timeout,
)


class BaselineCache:
    """Baseline K/V per distinct token prefix: image K/V depend only on the tokens before the
    last image token (and, on any-resolution families, on the image sizes the baseline images
    are resized to), so examples sharing them share one baseline computation."""

    def __init__(
        self, model: HookedLVLM, opts: RunOptions, reference_images: list[Any] | None,
        baseline_image: Any,
    ):
        self.model, self.opts = model, opts
        self.refs, self.image = reference_images, baseline_image
        self.store: dict[tuple, BaselineKV] = {}

    def __call__(self, inp: LVLMInput) -> BaselineKV:
        cfg = self.opts.attribution.ablation
        src = source_mask(inp, cfg.source)
        cut = int(src[0].nonzero().max()) + 1
        key = tuple(inp.input_ids[0, :cut].tolist())
        if resizes_stand_ins(self.model) and inp.image_sizes is not None:  # resized refs
            key = (key, tuple(map(tuple, inp.image_sizes.tolist())))
        if cfg.scope != "text" or cfg.baseline == "blank":  # blank: sized like each image
            return compute_baseline(
                self.model, inp, cfg, baseline_image=self.image, reference_images=self.refs
            )
        if key not in self.store:
            base = compute_baseline(
                self.model,
                inp.select(0),
                cfg,
                baseline_image=self.image,
                reference_images=self.refs,
            )
            self.store[key] = BaselineKV(
                [k[:, :, :cut] for k in base.keys],
                [v[:, :, :cut] for v in base.values],
                src[:, :cut],
            )
        b = self.store[key]
        pad = inp.shape[1] - cut
        grow = lambda t: torch.nn.functional.pad(t, (0, 0, 0, pad))  # noqa: E731
        return BaselineKV([grow(k) for k in b.keys], [grow(v) for v in b.values], src)


def predict(model: HookedLVLM, inp: LVLMInput) -> int:
    """The model's greedy answer token at the final position."""
    with torch.no_grad():
        return int(model(inp)[0, -1].argmax())


def chunk_metas(opts: RunOptions, records: list[Any], n_masks: int) -> dict[int, list[dict]]:
    """Per example, the fingerprint of each of its chunks (the last one may be short)."""
    key, size = options_key(opts), opts.chunk_masks
    starts = range(0, n_masks, size)
    return {
        i: [chunk_fingerprint(key, i, rec.id, c, min(size, n_masks - s), row)
            for c, s in enumerate(starts)]  # fmt: skip
        for i, (rec, row) in enumerate(zip(records, map(row_key, records), strict=True))
    }


def row_label(record: Any, index: int) -> str:
    """Where an example comes from, for messages: its CSV row / JSONL line, else its index."""
    where = getattr(record, "meta", {}).get("where")
    return f"{where} (id {record.id!r})" if where else f"example {index} (id {record.id!r})"


def run_shard(
    model: HookedLVLM,
    records: list[Any],
    opts: RunOptions,
    out: Path,
    shard: Shard,
    masks: MaskSource,
    baselines: BaselineCache,
    engines: dict[int, AblationEngine] | None = None,
    keep_engines: int = 0,
) -> None:
    """Predictions and masked-run chunks of this process's examples (skipping finished ones).

    ``masks`` hands out the run's masks one chunk of ``opts.chunk_masks`` at a time (never
    all at once). The engines of the first ``keep_engines`` attributed examples are kept in
    ``engines``, so that later steps (the ranking comparison) reuse their prefix caches.
    """
    cfg, n_masks = opts.attribution, masks.n_masks
    if masks.chunk_size != opts.chunk_masks:
        raise ValueError(f"masks come in chunks of {masks.chunk_size}, the run's files hold "
                         f"{opts.chunk_masks}: build the MaskSource with chunk_size=chunk_masks")
    metas = chunk_metas(opts, records, n_masks)
    mine = [i for i in range(len(records)) if shard.owns(i)]
    bar = tqdm(total=len(mine) * n_masks, unit="mask", desc=f"attribute [rank {shard.rank}]")
    changed = []
    for i in mine:
        rec = records[i]
        inp = prepare_record(model, rec, opts.answer_rule)
        row = metas[i][0]["row"]
        info = load_prediction(out, i, row)
        if info is None and prediction_path(out, i).exists():  # computed from an older row
            forget_example(out, i)
            changed.append(row_label(rec, i))
        if info is None:
            guess = predict(model, inp)
            example = AttributedExample.predicted(
                i, rec, int(inp.answer_ids[0]), guess,
                model.tokenizer.convert_ids_to_tokens(guess), row,
            )
            save_prediction(out, example)
            info = example.to_json()
        if not (info["correct"] or opts.keep_wrong):
            bar.update(n_masks)
            continue
        todo = [c for c, meta in enumerate(metas[i]) if not chunk_done(out, i, c, meta)]
        bar.update(n_masks - sum(int(metas[i][c]["n_masks"]) for c in todo))
        if not todo:
            continue
        engine = build_engine(model, inp, baselines(inp), cfg.ablation, cfg.metric, cfg.batch_size)
        for c, part in masks.chunks(only=set(todo)):
            save_chunk(out, i, c, engine.run(part, progress=False)[0], metas[i][c])
            bar.update(part.shape[0])
        if engines is not None and len(engines) < keep_engines:
            engines[i] = engine
    bar.close()
    if changed:
        warnings.warn(f"recomputed {len(changed)} example(s) whose data changed since the last "
                      f"run: {', '.join(changed)}", stacklevel=2)  # fmt: skip


def merge(
    out: Path, records: list[Any], metas: dict[int, list[dict]], opts: RunOptions,
    world: int = 1, timeout: float = 0.0,
) -> tuple[list[dict], list[int], torch.Tensor]:  # fmt: skip
    """Rank 0: read every shard's predictions, keep the examples to attribute (answered
    correctly, or all with ``--keep-wrong``) and merge their chunks.

    Args:
        out: The run's folder.
        records: The run's examples.
        metas: Per example, the fingerprint of each of its chunks (:func:`chunk_metas`).
        opts: The run's options.
        world: Processes sharing the run (a damaged file names the shard to run again).
        timeout: Seconds to wait for files other processes still write.

    Returns:
        The predictions, the kept example indices and their ``[n_kept, n_masks]`` metrics.
    """
    if not records:
        raise RunError("the dataset has no examples: nothing to attribute")
    rows = [metas[i][0]["row"] if metas[i] else "" for i in range(len(records))]
    infos = read_predictions(out, rows, world, timeout)
    kept = [i for i, info in enumerate(infos) if info["correct"] or opts.keep_wrong]
    if not kept:
        raise RunError(
            f"the model answered none of the {len(records)} example(s) correctly: nothing to "
            "attribute (use --keep-wrong to attribute its own answers anyway)"
        )
    return infos, kept, read_metrics(out, kept, metas, world, timeout)


def run_attribution(
    model: HookedLVLM,
    records: list[Any],
    opts: RunOptions,
    *,
    overwrite: bool = False,
    reference_images: list[Any] | None = None,
    baseline_image: Any = None,
    merge_timeout: float = 7 * 24 * 3600,
    keep_engines: int = 0,
) -> AttributionRun | None:
    """Run (or resume) head attribution over ``records``; rank 0 returns the merged outputs.

    Args:
        model, records, opts: The model, the examples and the run's options.
        overwrite: Discard a run with other options in ``opts.out``.
        reference_images, baseline_image: For the ``mean`` and ``image`` baselines.
        merge_timeout: Seconds rank 0 of a SLURM array waits for the other tasks' files
            (a single process or a torchrun group never waits).
        keep_engines: How many examples' engines to hand back (see :func:`run_shard`).

    Returns:
        On rank 0 the :class:`~lvlm_lens.run.outcome.AttributionRun` (with the baseline
        cache, and the engines of the first ``keep_engines`` examples this process
        attributed, by example index); else ``None``.
    """
    shard = current_shard()
    cfg = opts.attribution
    check_config(model, cfg)
    heads = model.cfg.n_layers * model.cfg.n_heads
    check_mask_memory(cfg.n_masks, heads, len(records), method=cfg.method, holdout=cfg.holdout)
    out = check_out_dir(opts, overwrite, shard)
    masks = MaskSource(cfg.n_masks, model.cfg.n_layers, model.cfg.n_heads, cfg.rate, cfg.seed,
                       opts.chunk_masks)
    baselines = BaselineCache(model, opts, reference_images, baseline_image)
    engines: dict[int, AblationEngine] = {}
    run_shard(model, records, opts, out, shard, masks, baselines, engines, keep_engines)
    shard.barrier()
    if shard.rank != 0:
        return None
    metas = chunk_metas(opts, records, cfg.n_masks)
    timeout = wait_timeout(shard, merge_timeout)
    infos, kept, metrics = merge(out, records, metas, opts, shard.world, timeout)
    result = fit_result(
        masks,
        metrics,
        cfg,
        model_name=model.cfg.model_name,
        example_ids=[str(infos[i]["id"]) for i in kept],
        layer_kinds=model.attn_kinds(),
    )
    result.save(out / "attribution")
    result.to_csv(out / "attribution.csv")
    rows = [m[0]["row"] if m else "" for m in metas.values()]
    examples = attributed_examples(records, infos, rows, kept, result)
    return AttributionRun(out, result, examples, metrics, result.masks, baselines, engines)
