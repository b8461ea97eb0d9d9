"""The resumable, chunked attribution runner (in-process; the CLI kill test is elsewhere)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.head_attribution import AttributionConfig
from lvlm_lens.errors import RunError
from lvlm_lens.interventions.ablation import HeadAblation
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.runner import run_attribution
from lvlm_lens.run.store import chunk_path
from tests.helpers import noise_image


@dataclass
class Rec:
    image: Any
    prompt: str
    answer: str
    id: str
    mask: Any = None


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))


def records(model, n=3):
    """Examples whose answer is the model's own prediction (so all count as correct)."""
    out = []
    for i in range(n):
        r = Rec(noise_image(20, 20, i), "USER: <image>\nwhat is this ? ASSISTANT:", "", f"ex{i}")
        with torch.no_grad():
            guess = model(model.prepare(r.image, r.prompt))[0, -1].argmax()
        r.answer = model.tokenizer.convert_ids_to_tokens(int(guess))
        out.append(r)
    return out


def options(tmp_path, **kw):
    cfg = AttributionConfig(n_masks=40, rate=0.2, batch_size=16,
                            ablation=HeadAblation(baseline="mean"))
    return RunOptions(out=str(tmp_path / "run"), chunk_masks=16, attribution=cfg, **kw)


def test_resume_after_lost_chunks_gives_identical_results(model, tmp_path):
    recs = records(model)
    refs = [noise_image(20, 20, 50 + i) for i in range(3)]
    first = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    out = first.out
    assert first.metrics.shape == (3, 40)
    assert len(list((out / "chunks").glob("*.safetensors"))) == 3 * 3
    # a killed run: some chunks and one prediction never written
    for path in [chunk_path(out, 1, 2), chunk_path(out, 2, 0), chunk_path(out, 2, 1)]:
        path.unlink()
    (out / "examples" / "00002.json").unlink()
    second = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    assert torch.equal(second.metrics, first.metrics)
    assert torch.equal(second.result.coef, first.result.coef)


def test_masks_are_drawn_chunk_by_chunk_and_equal_the_all_at_once_path(model, tmp_path,
                                                                       monkeypatch):
    """No draw holds more than a chunk's masks (40 masks, files of 16, fit chunks of 10); the
    run's masks, metrics and attribution are those of one draw of all the masks."""
    import lvlm_lens.attribution.chunked_fit as chunked
    from lvlm_lens.attribution.head_attribution import fit_result
    from lvlm_lens.attribution.regression import sample_masks
    from lvlm_lens.interventions.ablation import compute_baseline
    from lvlm_lens.interventions.engine import AblationEngine

    draws, real = [], torch.rand

    def rand(*size, generator=None, **kw):
        draws.append(size[0] if len(size) == 1 else size)
        return real(*size, generator=generator, **kw)

    recs, refs = records(model, 2), [noise_image(20, 20, 50)]
    monkeypatch.setattr(chunked, "FIT_CHUNK", 10 * model.cfg.n_layers * model.cfg.n_heads)
    monkeypatch.setattr(torch, "rand", rand)
    res = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    monkeypatch.setattr(torch, "rand", real)
    rows = [d[0] for d in draws]
    assert rows and max(rows) <= 16, rows
    cfg = options(tmp_path).attribution
    masks = sample_masks(40, model.cfg.n_layers, model.cfg.n_heads, cfg.rate, cfg.seed)
    assert torch.equal(res.masks, masks) and torch.equal(res.result.masks, masks)
    for i, rec in enumerate(recs):
        inp = model.prepare(rec.image, rec.prompt, answers=rec.answer)
        base = compute_baseline(model, inp, cfg.ablation, reference_images=refs)
        whole = AblationEngine(model, inp, base, cfg.ablation, cfg.metric, cfg.batch_size)
        torch.testing.assert_close(res.metrics[i], whole.run(masks, progress=False)[0],
                                   atol=1e-6, rtol=0)  # fmt: skip
    at_once = fit_result(masks, res.metrics, cfg)
    torch.testing.assert_close(res.result.coef, at_once.coef, atol=1e-8, rtol=0)
    torch.testing.assert_close(res.result.pooled_coef, at_once.pooled_coef, atol=1e-8, rtol=0)


def test_a_run_killed_inside_a_chunk_resumes_to_identical_results(model, tmp_path, monkeypatch):
    """Killed while computing example 1's second chunk: the next run computes only what is
    missing and ends with the uninterrupted run's metrics and attribution."""
    import lvlm_lens.run.runner as runner

    recs, refs = records(model, 2), [noise_image(20, 20, 50)]
    whole = run_attribution(model, recs, options(tmp_path / "whole"), reference_images=refs)
    real, saved = runner.save_chunk, []

    def killed(out, i, c, *args):
        if (i, c) == (1, 1):
            raise KeyboardInterrupt
        saved.append((i, c))
        real(out, i, c, *args)

    monkeypatch.setattr(runner, "save_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        run_attribution(model, recs, options(tmp_path), reference_images=refs)
    assert saved == [(0, 0), (0, 1), (0, 2), (1, 0)]
    saved.clear()
    monkeypatch.setattr(runner, "save_chunk", lambda out, i, c, *a: (saved.append((i, c)),
                                                                    real(out, i, c, *a)))
    again = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    assert saved == [(1, 1), (1, 2)]  # only the chunks the killed run did not write
    assert torch.equal(again.metrics, whole.metrics)
    assert torch.equal(again.result.coef, whole.result.coef)
    assert torch.equal(again.result.pooled_coef, whole.result.pooled_coef)


def test_changed_options_are_refused_unless_overwrite(model, tmp_path):
    recs = records(model, 2)
    refs = [noise_image(20, 20, 50)]
    run_attribution(model, recs, options(tmp_path), reference_images=refs)
    changed = options(tmp_path)
    changed.attribution.rate = 0.3
    with pytest.raises(RunError, match="rate"):
        run_attribution(model, recs, changed, reference_images=refs)
    out = run_attribution(model, recs, changed, reference_images=refs, overwrite=True)
    assert json.loads((out.out / "run.json").read_text())["attribution"]["rate"] == 0.3


def test_overwrite_never_deletes_files_the_run_did_not_write(model, tmp_path):
    """--out pointed at a folder with the user's data: --overwrite refuses, naming the foreign
    files, and removes nothing; once they are moved away it discards only the run."""
    recs = records(model, 1)
    refs = [noise_image(20, 20, 50)]
    first = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    out = first.out
    (out / "data.csv").write_text("image,prompt,answer\n")
    (out / "images").mkdir()
    (out / "images" / "a.png").write_bytes(b"user image")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    changed = options(tmp_path)
    changed.attribution.rate = 0.3
    with pytest.raises(RunError, match=r"holds files no run wrote \(data\.csv, images\)"):
        run_attribution(model, recs, changed, reference_images=refs, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing removed
    (out / "data.csv").unlink()
    (out / "images" / "a.png").unlink()
    (out / "images").rmdir()
    again = run_attribution(model, recs, changed, reference_images=refs, overwrite=True)
    assert json.loads((again.out / "run.json").read_text())["attribution"]["rate"] == 0.3


def test_wrong_answers_are_excluded_and_reported(model, tmp_path):
    recs = records(model, 3)
    wrong = next(w for w in ("star", "circle") if w != recs[1].answer)
    recs[1].answer = wrong
    res = run_attribution(model, recs, options(tmp_path), reference_images=[noise_image(20, 20, 9)])
    assert res.kept == [0, 2]
    assert res.examples[1].correct is False and not res.examples[1].attributed
    assert res.result.example_ids == ["ex0", "ex2"]
    kept = run_attribution(model, recs, options(tmp_path / "k", keep_wrong=True),
                           reference_images=[noise_image(20, 20, 9)])
    assert kept.kept == [0, 1, 2]


def test_shared_baseline_equals_per_example_baseline(model, tmp_path):
    """The prefix-keyed baseline cache must give the same metrics as computing it per example."""
    from lvlm_lens.attribution.regression import sample_masks
    from lvlm_lens.interventions.ablation import compute_baseline
    from lvlm_lens.interventions.engine import AblationEngine

    recs = records(model, 2)
    refs = [noise_image(20, 20, 50 + i) for i in range(2)]
    res = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    cfg = options(tmp_path).attribution
    masks = sample_masks(40, model.cfg.n_layers, model.cfg.n_heads, cfg.rate, cfg.seed)
    inp = model.prepare(recs[1].image, recs[1].prompt, answers=recs[1].answer)
    base = compute_baseline(model, inp, cfg.ablation, reference_images=refs)
    direct = AblationEngine(model, inp, base, cfg.ablation, cfg.metric).run(masks, progress=False)
    assert torch.allclose(res.metrics[1], direct[0], atol=1e-5)


def test_a_lost_chunk_fails_fast_in_a_single_process(model, tmp_path, monkeypatch):
    """With no other process writing, a missing chunk can never appear: merging must stop at once
    with the re-run hint, not wait (the default wait, for SLURM arrays, is a week)."""
    import time

    import lvlm_lens.run.runner as runner

    real = runner.run_shard

    def lose_one(model, records, opts, out, *args):
        real(model, records, opts, out, *args)
        chunk_path(out, 1, 0).unlink()

    monkeypatch.setattr(runner, "run_shard", lose_one)
    start = time.time()
    with pytest.raises(RunError, match="1 result files still missing.*re-run"):
        run_attribution(model, records(model, 2), options(tmp_path),
                        reference_images=[noise_image(20, 20, 9)])  # fmt: skip
    assert time.time() - start < 60


def test_slurm_array_rank_0_waits_for_the_others_with_a_timeout(model, tmp_path, monkeypatch):
    """Rank 0 of a 2-task SLURM array runs examples 0 and 2, then waits for example 1 (task 1's)
    only as long as merge_timeout."""
    import time

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    for name in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_MIN", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    start = time.time()
    with pytest.raises(RunError, match="still missing after 1s.*re-run the same command"):
        run_attribution(model, records(model, 3), options(tmp_path),
                        reference_images=[noise_image(20, 20, 9)], merge_timeout=1.0)  # fmt: skip
    assert 1.0 <= time.time() - start < 60
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "examples").iterdir()) == ["00000.json", "00002.json"]


def test_damaged_and_foreign_chunks_are_named_discarded_and_recomputed(model, tmp_path):
    recs = records(model)
    refs = [noise_image(20, 20, 50)]
    first = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    out = first.out
    truncated, foreign, alien = chunk_path(out, 0, 1), chunk_path(out, 1, 0), chunk_path(out, 2, 2)
    truncated.write_bytes(truncated.read_bytes()[:-7])  # a cut copy
    foreign.write_bytes(chunk_path(out, 2, 0).read_bytes())  # another example's chunk
    alien.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning) as caught:
        second = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    text = "\n".join(str(w.message) for w in caught)
    for path in (truncated, foreign, alien):
        assert f"{path} " in text, text
    assert "example '2' instead of '1'" in text
    assert torch.equal(second.metrics, first.metrics)
    assert torch.equal(second.result.coef, first.result.coef)


def test_merge_names_a_damaged_chunk(model, tmp_path):
    from lvlm_lens.run.runner import chunk_metas, merge

    recs = records(model, 2)
    opts = options(tmp_path)
    out = run_attribution(model, recs, opts, reference_images=[noise_image(20, 20, 50)]).out
    chunk_path(out, 1, 2).write_bytes(b"\0" * 8)
    with pytest.raises(RunError, match=r"ex00001_c0002\.safetensors does not load"):
        merge(out, recs, chunk_metas(opts, recs, 40), opts, timeout=0.0)
    assert not chunk_path(out, 1, 2).exists()  # the next run recomputes it


def test_progress_never_passes_its_total(model, tmp_path, monkeypatch):
    import lvlm_lens.run.runner as runner

    bars = []

    class Bar(runner.tqdm):
        def __init__(self, *a, **kw):
            super().__init__(*a, **{**kw, "disable": True})
            self.done = 0
            bars.append(self)

        def update(self, n=1):
            self.done += n
            assert self.done <= self.total, (self.done, self.total)

    monkeypatch.setattr(runner, "tqdm", Bar)
    recs = records(model, 2)
    refs = [noise_image(20, 20, 50)]
    first = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    chunk_path(first.out, 0, 0).unlink()  # resume with the short last chunk (8 masks) done
    run_attribution(model, recs, options(tmp_path), reference_images=refs)
    assert [b.done for b in bars] == [2 * 40, 2 * 40]


def test_only_an_unsynchronised_array_waits_for_files():
    from lvlm_lens.run.distributed import Shard
    from lvlm_lens.run.store import wait_timeout

    assert wait_timeout(Shard(), 3600.0) == 0.0
    assert wait_timeout(Shard(0, 2, synchronised=True), 3600.0) == 0.0
    assert wait_timeout(Shard(0, 2), 3600.0) == 3600.0


def test_rank_0_names_another_shards_damaged_file_and_its_shard(model, tmp_path, monkeypatch):
    """A 2-task SLURM array: rank 0 merges task 1's files; a damaged one of them is one
    RunError naming it and shard 1 (it used to be a JSONDecodeError traceback)."""
    for name in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_MIN", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    recs, refs = records(model, 2), [noise_image(20, 20, 9)]
    for rank in ("1", "0"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", rank)
        res = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    assert res.kept == [0, 1]
    damaged = res.out / "examples" / "00001.json"
    damaged.write_text(damaged.read_text()[:-5])
    with pytest.raises(RunError) as err:
        run_attribution(model, recs, options(tmp_path), reference_images=refs)
    text = str(err.value)
    assert "\n" not in text and f"{damaged} is damaged" in text, text
    assert "run shard 1 of 2 (torchrun rank / SLURM task 1) again" in text, text
