"""The shipped toy LVLM: it loads, it is accurate, it uses the image; training runs."""

from __future__ import annotations

import json

import pytest
import torch

from lvlm_lens.data import CLASSES, generate_dataset, image_prompt
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.toy import (
    TOY_GRID,
    build_toy_image_processor,
    build_toy_tokenizer,
    evaluate_toy,
    load_toy,
    toy_checkpoint_path,
)
from lvlm_lens.toy.train import _pixel_values
from lvlm_lens.toy.train_cli import main


@pytest.fixture(scope="module")
def toy() -> HookedLVLM:
    return HookedLVLM.from_pretrained(toy_checkpoint_path(), device="cpu")


def test_checkpoint_is_small_and_complete():
    path = toy_checkpoint_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file() and (path / "training.json").is_file()
    assert sum(f.stat().st_size for f in path.iterdir()) < 5 * 2**20


def test_toy_loads_with_the_expected_architecture(toy):
    cfg = toy.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model) == (4, 8, 128)
    assert cfg.lvlm_type == "llava"
    hf = toy.hf_model.config
    assert hf.vision_feature_select_strategy == "default"
    assert (hf.vision_config.image_size, hf.vision_config.patch_size) == (48, 8)
    ex = generate_dataset(1, seed=0)[0]
    inp = toy.prepare(ex.image, image_prompt(), ex.label)
    assert int(inp.groups["image"].sum()) == TOY_GRID**2 == 36
    for c in CLASSES:
        toy.to_single_token(c)
    assert load_toy(device="cpu").cfg.n_layers == 4
    # the shipped tokenizer is the one the code builds (data.VOCABULARY unchanged since)
    assert toy.tokenizer.get_vocab() == build_toy_tokenizer().get_vocab()


def test_heldout_accuracy(toy):
    acc = evaluate_toy(toy, n=200, seed=12345)
    assert acc["image_acc"] >= 0.95, acc
    assert acc["text_acc"] >= 0.95, acc


@torch.no_grad()
def test_answer_depends_on_the_image(toy):
    """Giving every image the same (mean) embeddings leaves chance-level accuracy."""
    exs = generate_dataset(80, seed=4321)
    inp = toy.prepare([e.image for e in exs], [image_prompt()] * 80, [e.label for e in exs])
    embeds = toy.image_embeddings(inp)
    mean = torch.stack(embeds).mean(0)
    clean = (toy(inp)[:, -1].argmax(-1) == inp.answer_ids).float().mean()
    blind = toy(inp.with_image_embeds([mean] * 80))[:, -1].argmax(-1)
    assert clean >= 0.9
    assert (blind == inp.answer_ids).float().mean() <= 0.3


def test_training_pixels_match_the_image_processor():
    proc = build_toy_image_processor()
    images = [e.image for e in generate_dataset(4, seed=1)]
    ref = proc(images=images, return_tensors="pt")["pixel_values"]
    ours = _pixel_values(images, torch.tensor(proc.image_mean), torch.tensor(proc.image_std))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_training_runs_a_few_steps(tmp_path):
    out = tmp_path / "toy"
    summary = main(
        ["--out", str(out), "--steps", "3", "--batch-size", "8", "--eval-n", "8",
         "--log-every", "1"]
    )  # fmt: skip
    assert torch.isfinite(torch.tensor(summary["final_loss"]))
    assert len(summary["history"]) == 3 and set(summary["eval"]) >= {"image_acc", "text_acc"}
    assert json.loads((out / "training.json").read_text())["steps"] == 3
    model = HookedLVLM.from_pretrained(out, device="cpu")
    assert model.cfg.n_layers == 4


def test_seed_reaches_the_dropout_stream(tmp_path):
    """Same seed, same weights, whatever the caller's torch generator holds; the caller's
    generator is left as it was. Before the dropout stream was seeded, dropout drew from the
    caller's generator: the two runs below gave different weights and consumed its state."""
    from safetensors.torch import load_file

    from lvlm_lens.toy.recipe import ToyArchitecture
    from lvlm_lens.toy.train import dropout_seed, train_toy

    arch = ToyArchitecture(layers=1, heads=2, d_model=16, d_mlp=16, attention_dropout=0.5)
    weights = []
    for caller_seed, run_seed, name in ((1, 7, "a"), (2, 7, "b"), (1, 8, "c")):
        torch.manual_seed(caller_seed)
        before = torch.get_rng_state()
        train_toy(tmp_path / name, seed=run_seed, steps=2, batch_size=4, architecture=arch,
                  eval_n=0, verbose=False)  # fmt: skip
        assert torch.equal(torch.get_rng_state(), before)
        weights.append(load_file(tmp_path / name / "model.safetensors"))
    same, other = weights[1], weights[2]
    assert all(torch.equal(v, same[k]) for k, v in weights[0].items())
    assert any(not torch.equal(v, other[k]) for k, v in weights[0].items())
    # The stream's seed is a fixed function of the run's seed, distinct per seed.
    assert dropout_seed(7) == dropout_seed(7) != dropout_seed(8)
    assert 0 <= dropout_seed(2**63) < 2**64


def test_seed_reaches_the_vision_warm_start(tmp_path):
    """A science-preset run of seed N starts its tower from the bundled recipe trained with seed
    N (trained first into ``<out>/../bundled_seed<N>`` when missing): the same seed gives the
    same weights everywhere, even with the warm start trained afresh; another seed gives another
    starting tower. Seed 0 starts from the shipped bundled toy (trained with seed 0). Before,
    every seed copied the shipped tower, so the two seeds' starting towers below were equal."""
    from safetensors.torch import load_file

    from lvlm_lens.toy.recipe import ToyArchitecture
    from lvlm_lens.toy.train import train_toy
    from lvlm_lens.toy.warm_start import warm_start_folder

    arch = ToyArchitecture(layers=1, heads=2, d_model=16, d_mlp=16, attention_dropout=0.5)
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / name / "science"
        summary = train_toy(out, seed=seed, steps=2, batch_size=4, preset="science",
                            architecture=arch, eval_n=0, verbose=False, vision_steps=1)  # fmt: skip
        assert summary["vision_init"] == "bundled" and summary["vision_init_seed"] == seed
        runs[name] = load_file(out / "model.safetensors")
    assert all(torch.equal(v, runs["b"][k]) for k, v in runs["a"].items())
    assert any(not torch.equal(v, runs["c"][k]) for k, v in runs["a"].items())

    def tower(folder):
        state = load_file(folder / "model.safetensors")
        return {k: v for k, v in state.items() if "vision_tower" in k}

    start_1, start_2 = (
        tower(tmp_path / "a" / "bundled_seed1"),
        tower(tmp_path / "c" / "bundled_seed2"),
    )
    assert any(not torch.equal(v, start_2[k]) for k, v in start_1.items())
    assert all(
        torch.equal(v, tower(tmp_path / "b" / "bundled_seed1")[k]) for k, v in start_1.items()
    )
    assert warm_start_folder("bundled", 0, tmp_path) == toy_checkpoint_path("bundled")
    assert warm_start_folder("bundled", 3, tmp_path) == tmp_path / "bundled_seed3"
