"""The main job: head attribution over a dataset, in resumable chunks, sharded across processes.

Everything a run computes is a file under ``out``, written atomically (temp file + rename):
one prediction file per example, then one metrics chunk per (example, block of masks). A run
killed at any moment and started again with the same options skips what exists and ends
with the same result as an uninterrupted run. Under torchrun / SLURM each process runs the
examples ``i % world == rank``; rank 0 merges, fits, ranks and writes the report.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lvlm_lens.ablation import BaselineKV, compute_baseline, source_mask
from lvlm_lens.attribution import AttributionConfig, check_config, fit_result
from lvlm_lens.distributed import Shard, current_shard
from lvlm_lens.engine import AblationEngine
from lvlm_lens.inputs import LVLMInput
from lvlm_lens.regression import sample_masks


@dataclass
class RunOptions:
    """Options of ``lvlm-lens attribute`` (every field is a CLI flag).

    Attributes:
        out: Output folder.
        model: Checkpoint folder or hub id; ``None`` = the bundled toy LVLM.
        data: Folder with images + ``data.csv``/``data.jsonl``; ``None`` = a synthetic set.
        n_examples: Size of the synthetic set (or a cap on a real one; 0 = all).
        data_seed: Seed of the synthetic set.
        n_reference: Images averaged for ``baseline="mean"`` (synthetic: a set of another
            seed; real data: the first images of the dataset).
        baseline_image: Image file for ``baseline="image"``.
        keep_wrong: Keep examples the model answers wrongly (default: excluded, reported).
        answer_rule: ``single`` (refuse multi-token answers) or ``first`` (score the first).
        chunk_masks: Masks per chunk file (the unit a killed run can lose).
        device: ``cpu``/``cuda``/... (default: CUDA if available).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        rankings: Also compute the baseline rankings and faithfulness/completeness curves.
        n_random: Random rankings for the random band.
        attribution: Head-attribution options.
    """

    out: str = "runs/attribute"
    model: str | None = None
    data: str | None = None
    n_examples: int = 24
    data_seed: int = 1000
    n_reference: int = 16
    baseline_image: str | None = None
    keep_wrong: bool = False
    answer_rule: str = "single"
    chunk_masks: int = 256
    device: str | None = None
    dtype: str = "float32"
    rankings: bool = True
    n_random: int = 10
    attribution: AttributionConfig = field(default_factory=AttributionConfig)

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        d = asdict(self)
        d.pop("out")
        return d


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file so that it either exists complete or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def atomic_json(obj: Any, path: Path) -> None:
    """Write a JSON file atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_out_dir(opts: RunOptions, overwrite: bool, shard: Shard) -> Path:
    """Create ``out`` or check that it belongs to a run with the same options."""
    out = Path(opts.out)
    marker = out / "run.json"
    mine = json.loads(json.dumps(opts.fingerprint(), default=str))
    if marker.exists():
        theirs = json.loads(marker.read_text())
        if theirs != mine:
            a, b = _flat(mine), _flat(theirs)
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if not overwrite:
                raise SystemExit(
                    f"{out} holds a run with other options ({', '.join(changed)} "
                    "differ): use the same options to resume, another --out, or "
                    "--overwrite to discard it"
                )
            if shard.rank == 0:
                shutil.rmtree(out)
    shard.barrier()
    for sub in ("examples", "chunks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if shard.rank == 0 and not marker.exists():
        atomic_json(mine, marker)
    return out


class BaselineCache:
    """Baseline K/V per distinct token prefix: image K/V depend only on the tokens before the
    last image token, so examples sharing that prefix share one baseline computation."""

    def __init__(
        self, model: Any, opts: RunOptions, reference_images: list[Any] | None, baseline_image: Any
    ):
        self.model, self.opts = model, opts
        self.refs, self.image = reference_images, baseline_image
        self.store: dict[tuple[int, ...], BaselineKV] = {}

    def __call__(self, inp: LVLMInput) -> BaselineKV:
        cfg = self.opts.attribution.ablation
        src = source_mask(inp, cfg.source)
        cut = int(src[0].nonzero().max()) + 1
        key = tuple(inp.input_ids[0, :cut].tolist())
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


def predict(model: Any, inp: LVLMInput) -> int:
    """The model's greedy answer token at the final position."""
    with torch.no_grad():
        return int(model(inp)[0, -1].argmax())


def run_shard(
    model: Any,
    records: list[Any],
    opts: RunOptions,
    out: Path,
    shard: Shard,
    masks: torch.Tensor,
    baselines: BaselineCache,
) -> None:
    """Predictions and masked-run chunks of this process's examples (skipping finished ones)."""
    cfg = opts.attribution
    n_chunks = -(-masks.shape[0] // opts.chunk_masks)
    mine = [i for i in range(len(records)) if shard.owns(i)]
    bar = tqdm(total=len(mine) * masks.shape[0], unit="mask", desc=f"attribute [rank {shard.rank}]")
    for i in mine:
        rec = records[i]
        inp = model.prepare(rec.image, rec.prompt, answers=rec.answer, answer_rule=opts.answer_rule)
        pred_file = out / "examples" / f"{i:05d}.json"
        if pred_file.exists():
            info = json.loads(pred_file.read_text())
        else:
            guess = predict(model, inp)
            info = {
                "index": i,
                "id": rec.id,
                "answer": rec.answer,
                "answer_id": int(inp.answer_ids[0]),
                "prediction_id": guess,
                "prediction": model.tokenizer.convert_ids_to_tokens(guess),
                "correct": guess == int(inp.answer_ids[0]),
            }
            atomic_json(info, pred_file)
        if not (info["correct"] or opts.keep_wrong):
            bar.update(masks.shape[0])
            continue
        todo = [c for c in range(n_chunks) if not chunk_path(out, i, c).exists()]
        bar.update((n_chunks - len(todo)) * opts.chunk_masks)
        if not todo:
            continue
        engine = AblationEngine(
            model, inp, baselines(inp), cfg.ablation, cfg.metric, cfg.batch_size
        )
        for c in todo:
            part = masks[c * opts.chunk_masks : (c + 1) * opts.chunk_masks]
            metrics = engine.run(part, progress=False)[0]
            atomic_save({"metrics": metrics}, chunk_path(out, i, c))
            bar.update(part.shape[0])
    bar.close()


def chunk_path(out: Path, example: int, chunk: int) -> Path:
    """File of one example's metrics for one block of masks."""
    return out / "chunks" / f"ex{example:05d}_c{chunk:04d}.safetensors"


def wait_for_files(paths: list[Path], timeout: float, poll: float = 5.0) -> None:
    """Rank 0 of a SLURM array: wait until the other tasks have written their files."""
    start = time.time()
    while missing := [p for p in paths if not p.exists()]:
        if time.time() - start > timeout:
            raise SystemExit(
                f"{len(missing)} result files still missing after {timeout:.0f}s "
                f"(e.g. {missing[0]}): re-run the same command to finish them"
            )
        time.sleep(poll)


def collect(
    out: Path, n_records: int, n_masks: int, opts: RunOptions, timeout: float
) -> tuple[list[dict], list[int], torch.Tensor]:
    """Merge every example's chunks into ``[n_kept, n_masks]`` metrics."""
    wait_for_files([out / "examples" / f"{i:05d}.json" for i in range(n_records)], timeout)
    infos = [json.loads((out / "examples" / f"{i:05d}.json").read_text()) for i in range(n_records)]
    kept = [i for i, info in enumerate(infos) if info["correct"] or opts.keep_wrong]
    if not kept:
        raise SystemExit(
            "the model answered every example wrongly: nothing to attribute "
            "(use --keep-wrong to attribute its own answers anyway)"
        )
    n_chunks = -(-n_masks // opts.chunk_masks)
    paths = [chunk_path(out, i, c) for i in kept for c in range(n_chunks)]
    wait_for_files(paths, timeout)
    rows = [
        torch.cat([load_file(str(chunk_path(out, i, c)))["metrics"] for c in range(n_chunks)])
        for i in kept
    ]
    return infos, kept, torch.stack(rows)


def run_attribution(
    model: Any,
    records: list[Any],
    opts: RunOptions,
    *,
    overwrite: bool = False,
    reference_images: list[Any] | None = None,
    baseline_image: Any = None,
    merge_timeout: float = 7 * 24 * 3600,
) -> dict[str, Any] | None:
    """Run (or resume) head attribution over ``records``; rank 0 returns the merged outputs.

    Returns:
        On rank 0: ``{"result", "infos", "kept", "metrics", "masks", "out"}``; else ``None``.
    """
    shard = current_shard()
    cfg = opts.attribution
    check_config(model, cfg)
    out = check_out_dir(opts, overwrite, shard)
    masks = sample_masks(cfg.n_masks, model.cfg.n_layers, model.cfg.n_heads, cfg.rate, cfg.seed)
    baselines = BaselineCache(model, opts, reference_images, baseline_image)
    run_shard(model, records, opts, out, shard, masks, baselines)
    shard.barrier()
    if shard.rank != 0:
        return None
    infos, kept, metrics = collect(out, len(records), cfg.n_masks, opts, merge_timeout)
    result = fit_result(
        masks,
        metrics,
        cfg,
        model_name=model.cfg.model_name,
        example_ids=[str(infos[i]["id"]) for i in kept],
    )
    result.save(out / "attribution")
    result.to_csv(out / "attribution.csv")
    return {
        "result": result,
        "infos": infos,
        "kept": kept,
        "metrics": metrics,
        "masks": masks,
        "out": out,
    }
