"""The claims runner end to end on a science toy v2 trained for a few steps at a tiny size
(seconds): every section runs on the v2 prompts and grid, the across-seeds table counts the v2
rules, and the docs block of the v2 toy is regenerated. The tiny toy answers at chance, so the
test keeps every example (the runner keeps only correctly answered, unflagged ones): it proves
the pipeline before the long training, not the numbers."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import lvlm_lens.run.claims as claims
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.run.claims_toys import TOYS, toy_markers
from lvlm_lens.toy import toy_checkpoint_path
from lvlm_lens.toy.recipe import ToyArchitecture
from lvlm_lens.toy.templates import ROLES_ENDING
from lvlm_lens.toy.train import train_toy

TINY = ToyArchitecture(layers=2, heads=4, d_model=32, d_mlp=64, attention_dropout=0.1)
FEW = ["--n-examples", "4", "--n-masks", "30", "--per-cell", "2"]


@pytest.fixture(scope="module")
def v2_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2seeds")
    for seed in (0, 1):
        train_toy(root / f"v2_seed{seed}", seed=seed, steps=3, batch_size=8, preset="science_v2",
                  architecture=TINY, eval_n=0, verbose=False,
                  vision_dir=toy_checkpoint_path("bundled"))  # fmt: skip
    return [str(root / f"v2_seed{s}") for s in (0, 1)]


@pytest.fixture
def keep_all(monkeypatch):
    """Every example counts as answered and unflagged; the prompts the model is given."""
    check = claims.check_baseline
    monkeypatch.setattr(claims, "_correct", lambda model, inputs: list(range(len(inputs))))
    monkeypatch.setattr(claims, "_correct_in_batch", lambda model, inp: list(range(len(inp))))
    monkeypatch.setattr(claims, "check_baseline", lambda *a, **k: dataclasses.replace(
        check(*a, **k), flagged=torch.zeros(len(a[1]), dtype=torch.bool)))  # fmt: skip
    prompts = []
    prepare = HookedLVLM.prepare

    def spy(self, images, texts, *args, **kwargs):
        prompts.extend([texts] if isinstance(texts, str) else texts)
        return prepare(self, images, texts, *args, **kwargs)

    monkeypatch.setattr(HookedLVLM, "prepare", spy)
    return prompts


def test_every_section_runs_on_the_v2_toy(tmp_path, v2_seeds, keep_all):
    out = tmp_path / "one"
    res = claims.main(["--model", v2_seeds[0], "--out", str(out), *FEW,
                       "--skip", "baselines"])  # fmt: skip  (toy inferred from training.json)
    assert res["toy"] == "science_v2" and res["testable"] == TOYS["science_v2"].testable
    assert json.loads((out / "claims.json").read_text())["args"]["toy"] == "science_v2"
    image_prompts = [p for p in keep_all if "<image>" in p]
    assert image_prompts and all(p.endswith(ROLES_ENDING) for p in image_prompts)
    assert res["rankings"]["n_heads"] == 8
    sem = res["semantics"]
    assert sem["grid"] == "v2" and sem["n_examples"] == sem["n_used"] == 8 * 3 * 2
    for part in (sem, sem["shared_answer"]):  # the shape question; the size question
        within = part["within_look"]
        assert within["n"] == 48 and within["n_cells"] == 24 and 0 < within["p_value"] <= 1
    assert (sem["attribute"], sem["shared_answer"]["attribute"]) == ("shape", "size")
    # why claim 5's v2 primary asks the size: at chance, the shape question's answer token
    # alone makes same-class vectors alike (0.99 here); with one answer for all, 0.16
    assert sem["within_look"]["value"] > 0.8 > 0.4 > sem["shared_answer"]["within_look"]["value"]
    sizes = [p for p in keep_all if "the size of the object" in p]
    assert len(sizes) >= 48 and all(p.endswith(ROLES_ENDING) for p in sizes)  # + flow, tokens
    assert {"question\u2192role", "image\u2192role", "role\u2192final"} <= set(
        res["flow"]["effect_centre_of_mass"])  # fmt: skip
    assert set(res["tokens"]) == {"shape", "colour", "size", "background"}


def test_seeds_table_of_the_v2_toy(tmp_path, v2_seeds, keep_all):
    begin, end = toy_markers(TOYS["science_v2"])
    docs = tmp_path / "claims.md"
    docs.write_text(f"# x\n\n{begin}\nold\n{end}\n")
    argv = ["--toy", "science_v2", "--seeds", *v2_seeds, *FEW[:-1], "1", "--docs", str(docs),
            "--skip", "baselines", "rankings", "tokens"]  # fmt: skip  (one image per cell)
    table = claims.main(argv + ["--out", str(tmp_path / "a")])
    claims.main(argv + ["--out", str(tmp_path / "b")])
    first = (tmp_path / "a" / "claims.json").read_bytes()
    assert first == (tmp_path / "b" / "claims.json").read_bytes()
    assert table["toy"] == "science_v2" and table["seeds"] == ["seed0", "seed1"]
    rows = {r["claim"]: r for r in table["primary"]}
    assert all(r["testable"] for r in rows.values())
    for name in table["seeds"]:
        seed = json.loads((tmp_path / "a" / name / "claims.json").read_text())
        assert rows["5"]["per_seed"][name] == pytest.approx(
            seed["semantics"]["shared_answer"]["within_look"]["value"], abs=1e-6)  # fmt: skip
    assert rows["5"]["n_seeds"] == 2 and rows["4a"]["verdict"] == "not run"
    text = docs.read_text()
    assert "old" not in text and "Toy: `science_v2`" in text and "| seed0 | seed1 |" in text


def test_v2_needs_a_checkpoint_and_one_toy_per_run(v2_seeds, capsys):
    with pytest.raises(SystemExit):
        claims.main(["--toy", "science_v2"])
    assert "no shipped checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        claims.main(["--toy", "science", "--model", v2_seeds[0]])
    assert "trained as another toy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        claims.main(["--model", v2_seeds[0], "--per-cell", "0"])
    assert "--per-cell must be >= 1" in capsys.readouterr().err
