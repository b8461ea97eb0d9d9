"""The science toy: its preset trains, the shipped checkpoint is accurate per question type,
and the question matters (question -> final knockout changes the answer)."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens.data.questions import ATTRIBUTES, attribute_records
from lvlm_lens.interventions.knockout import knockout_hooks
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.toy import (
    build_toy_tokenizer,
    evaluate_attributes,
    load_toy,
    toy_checkpoint_path,
)
from lvlm_lens.toy.recipe import PRESETS, ToyArchitecture, ToyRecipe
from lvlm_lens.toy.train_cli import main


def test_science_preset_trains_a_few_steps_with_architecture_flags(tmp_path):
    out = tmp_path / "science"
    summary = main(
        ["--preset", "science", "--out", str(out), "--steps", "2", "--batch-size", "8",
         "--eval-n", "4", "--log-every", "1", "--layers", "2", "--heads", "4", "--d-model", "64"]
    )  # fmt: skip
    assert summary["preset"] == "science" and summary["task"] == "attributes"
    assert summary["architecture"] == {
        "layers": 2, "heads": 4, "d_model": 64, "d_mlp": 256, "attention_dropout": 0.1,
    }  # fmt: skip
    assert set(summary["eval"]["acc"]) == {
        f"{k}:{a}" for k in ("image", "text") for a in ATTRIBUTES
    }
    assert len(summary["history"]) == 2 and "train_acc" in summary["history"][0]
    model = HookedLVLM.from_pretrained(out, device="cpu")
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model) == (2, 4, 64)
    assert model.hf_model.config.text_config.attention_dropout == 0.1


def test_recipes_and_architectures_are_checked():
    assert PRESETS["bundled"] == ToyRecipe()  # the bundled recipe is the default
    science = PRESETS["science"].architecture
    assert (science.layers, science.heads, science.attention_dropout) == (8, 8, 0.1)
    with pytest.raises(ValueError, match="not a multiple of heads"):
        ToyArchitecture(d_model=100, heads=8).text_config()
    with pytest.raises(ValueError, match="unknown task"):
        ToyRecipe(task="colour")
    with pytest.raises(ValueError, match="attribute_weights"):
        ToyRecipe(attribute_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="unknown toy 'huge'"):
        toy_checkpoint_path("huge")
    assert toy_checkpoint_path() == toy_checkpoint_path("bundled") != toy_checkpoint_path("science")


@pytest.fixture(scope="module")
def science() -> HookedLVLM:
    return load_toy(device="cpu", name="science")


def test_shipped_science_checkpoint(science):
    path = toy_checkpoint_path("science")
    assert (path / "training.json").is_file()
    assert sum(f.stat().st_size for f in path.iterdir()) < 8 * 2**20
    assert (science.cfg.n_layers, science.cfg.n_heads, science.cfg.d_model) == (8, 8, 128)
    assert science.tokenizer.get_vocab() == build_toy_tokenizer().get_vocab()


def test_science_heldout_accuracy_per_question_type(science):
    """Fresh seed (not the training data, not the held-out set of training.json), every
    attribute asked with the image and with the scene in words: >= 95 % on each."""
    acc = evaluate_attributes(science, n=100, seed=24680)["acc"]
    assert len(acc) == 8 and min(acc.values()) >= 0.95, acc


@torch.no_grad()
def test_question_to_final_knockout_changes_the_answer(science):
    """The question matters. Blocking question -> final in every layer changes the correct
    answers of every attribute but at most one (the model's fallback when it cannot read the
    question: the shipped toy then names the background); blocking question -> role as well
    hides the question completely: the same image then gets the same answer whatever is asked
    (minimal-pair prompts), so at most one attribute in four can still be right."""
    layers = list(range(science.cfg.n_layers))
    recs = {a: attribute_records(16, seed=97531, attributes=(a,)) for a in ATTRIBUTES}
    logits, hits, blind, changed = [], [], [], []
    for attribute in ATTRIBUTES:
        rs = recs[attribute]
        inp = science.prepare([r.image for r in rs], [r.prompt for r in rs], [r.answer for r in rs])
        clean = science(inp)[:, -1].argmax(-1)
        ok = clean == inp.answer_ids
        assert ok.float().mean() >= 0.9
        hooks = knockout_hooks(science, inp, "question", "final", layers)
        blocked = science.run_with_hooks(inp, fwd_hooks=hooks)[:, -1].argmax(-1)
        changed.append(float((blocked != clean)[ok].float().mean()))
        hooks += knockout_hooks(science, inp, "question", "role", layers)
        out = science.run_with_hooks(inp, fwd_hooks=hooks)[:, -1]
        logits.append(out)
        hits.append(ok.float().mean())
        blind.append((out.argmax(-1) == inp.answer_ids).float())
    assert sorted(changed)[1] >= 0.5, dict(zip(ATTRIBUTES, changed, strict=True))
    for other in logits[1:]:
        torch.testing.assert_close(other, logits[0], atol=1e-4, rtol=1e-4)
    assert float(torch.stack(blind).sum(0).max()) <= 1  # one attribute per image at most
    assert float(torch.stack(blind).mean()) <= 0.25 < float(torch.stack(hits).mean())
