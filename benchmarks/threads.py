"""CPU threads on a busy machine: what ``--threads`` should default to.

Two parts (``--part``):

``command``: the README's command, ``lvlm-lens attribute --out DIR`` (the bundled toy LVLM on
24 synthetic examples, 1000 masks each), run as a subprocess once per ``--threads`` setting
(``--settings``, e.g. ``2,1,auto``: ``auto`` passes no flag, so the run picks its default;
the number of cores is torch's own default, which every run used before ``--threads``).
Prints the wall time of each, the load average (``os.getloadavg``) before and after, and the
share of the CPUs that other processes took meanwhile.

``sizes``: masks per second of the head-ablation engine on random LLaVA-1.5-shaped models of
growing width (576 image tokens, like LLaVA-1.5; ``--widths``), and on the toy LVLM, with 1
thread and with torch's default, interleaved in one process. The ratio tells from which size
on more threads pay off. ``--contend K`` starts K busy processes (a Python spin loop each)
while it times, to stand for the other jobs of a shared machine.

Run: ``python benchmarks/threads.py --part command`` (minutes to tens of minutes, depending
on the load) and ``python benchmarks/threads.py --part sizes --contend 1``. Results:
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    OtherLoad,
    build_random_llava,
    llava15_prompt,
    machine_info,
    paired_ratio,
    random_images,
    time_interleaved,
)
from lvlm_lens import HookedLVLM, synthetic_records, toy_checkpoint_path  # noqa: E402
from lvlm_lens.attribution.regression import sample_masks  # noqa: E402
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline  # noqa: E402
from lvlm_lens.interventions.engine import AblationEngine  # noqa: E402

DEFAULT_THREADS = torch.get_num_threads()


def load() -> str:
    return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1/5/15 min)"


def part_command(settings: list[str], out_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["TQDM_DISABLE"] = "1"
    for setting in settings:
        out = out_root / f"threads-{setting}"
        cmd = [sys.executable, "-m", "lvlm_lens.run.cli", "attribute", "--out", str(out)]
        cmd += [] if setting == "auto" else ["--threads", setting]
        print(f"$ lvlm-lens attribute --out {out}" + ("" if setting == "auto" else
              f" --threads {setting}"), flush=True)  # fmt: skip
        print(f"  before: {load()}", flush=True)
        with OtherLoad() as machine:
            start, cpu = time.perf_counter(), sum(os.times()[2:4])
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall, cpu = time.perf_counter() - start, sum(os.times()[2:4]) - cpu
        if run.returncode:
            raise SystemExit(run.stderr[-2000:])
        # OtherLoad counts the run (a child process) as another process: take its CPU time out
        cores = os.cpu_count() or 1
        others = "?" if machine.share is None else f"{machine.share - cpu / (wall * cores):.0%}"
        print(f"  after:  {load()}; other processes used {others} of the CPUs")
        print(f"  wall {wall:.1f} s, CPU time of the run {cpu:.1f} s", flush=True)


def spin() -> None:
    while True:
        pass


def engine_call(model: HookedLVLM, inp, refs, batch: int):
    config = HeadAblation(baseline="mean")
    base = compute_baseline(model, inp, config, reference_images=refs)
    engine = AblationEngine(model, inp, base, config, "logit", batch)
    masks = sample_masks(batch, model.cfg.n_layers, model.cfg.n_heads, 0.05, 0)
    engine.run(masks, progress=False)  # builds the prefix cache

    def timed(threads: int):
        def run():
            torch.set_num_threads(threads)
            return engine.run(masks, progress=False)

        return run

    return timed


def part_sizes(widths: list[int], repeats: int, batch: int) -> None:
    models = []
    toy = HookedLVLM.from_pretrained(toy_checkpoint_path(), device="cpu")
    rec = synthetic_records(1, 0)[0]
    refs = [r.image for r in synthetic_records(2, 1)]
    models.append(("toy LVLM", toy, toy.prepare(rec.image, rec.prompt, answers=rec.answer), refs))
    for d in widths:
        heads = max(4, d // 64)
        hf, tok, proc = build_random_llava(
            n_layers=8, d_model=d, n_heads=heads, d_mlp=int(2.75 * d)
        )
        model = HookedLVLM.from_hf(hf, tokenizer=tok, image_processor=proc)
        inp = model.prepare(random_images(1), llava15_prompt())
        models.append((f"LLaVA-shaped, 8 x {d}", model, inp, random_images(2, seed=1)))
    print("| model | params | image tokens | s/mask, 1 thread | s/mask, "
          f"{DEFAULT_THREADS} threads | {DEFAULT_THREADS} threads / 1 thread |")
    print("|---|---|---|---|---|---|")
    for name, model, inp, refs in models:
        timed = engine_call(model, inp, refs, batch)
        samples: dict[str, list[float]] = {}
        med = time_interleaved(
            {"1": timed(1), "n": timed(DEFAULT_THREADS)}, repeats, 1, samples, shuffle=True
        )
        n_params = sum(p.numel() for p in model.parameters())
        n_img = int(inp.groups["image"].sum())
        print(f"| {name} | {n_params / 1e6:.1f} M | {n_img} | {med['1'] / batch:.4f} | "
              f"{med['n'] / batch:.4f} | {paired_ratio(samples, 'n', '1'):.2f} |", flush=True)
    torch.set_num_threads(DEFAULT_THREADS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["command", "sizes"], required=True)
    p.add_argument("--settings", default=f"{DEFAULT_THREADS},1,auto",
                   help="--threads values of the command part ('auto' = no flag)")
    p.add_argument("--widths", default="256,512,1024,2048", help="d_model of the sizes part")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of the sizes part")
    p.add_argument("--batch", type=int, default=16, help="masks per engine call")
    p.add_argument("--contend", type=int, default=0, help="busy processes while timing")
    args = p.parse_args()
    print(machine_info())
    spinners = [mp.Process(target=spin, daemon=True) for _ in range(args.contend)]
    for s in spinners:
        s.start()
    print(f"{args.contend} busy process(es) started; {load()}", flush=True)
    try:
        if args.part == "command":
            with tempfile.TemporaryDirectory() as tmp:
                part_command(args.settings.split(","), Path(tmp))
        else:
            part_sizes([int(w) for w in args.widths.split(",")], args.repeats, args.batch)
    finally:
        for s in spinners:
            s.terminate()
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
