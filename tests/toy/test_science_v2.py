"""The science toy v2: its preset, the ``"roles"`` template (four role tokens between question
and final token, in training and in the saved chat template), and a tiny v2 trained for a few
steps end to end through the claims runner (the pipeline before the long training)."""

from __future__ import annotations

import json

import pytest
import torch

from lvlm_lens.data import ATTRIBUTES, attribute_image_prompt, attribute_records
from lvlm_lens.model.hooked_lvlm import HookedLVLM
from lvlm_lens.toy import build_toy_tokenizer, evaluate_attributes, toy_checkpoint_path
from lvlm_lens.toy import train as train_module
from lvlm_lens.toy.recipe import PRESETS, TemplatedRecipe, ToyArchitecture, recipe_template
from lvlm_lens.toy.templates import ROLES_ENDING, apply_template, chat_template, template_of
from lvlm_lens.toy.train import train_toy

TINY = ToyArchitecture(layers=2, heads=4, d_model=32, d_mlp=64, attention_dropout=0.1)


def test_v2_preset_has_more_heads_the_roles_template_and_the_science_task():
    v1, v2 = PRESETS["science"], PRESETS["science_v2"]
    assert v2.architecture.layers * v2.architecture.heads == 192 > 3 * 64 - 1
    assert v2.architecture.d_model % v2.architecture.heads == 0
    assert recipe_template(v2) == "roles" and recipe_template(v1) == "llava"
    assert (v2.task, v2.vision_init, v2.attribute_weights) == (
        v1.task, v1.vision_init, v1.attribute_weights)  # fmt: skip
    assert recipe_template(v2.with_overrides(steps=5)) == "roles"  # overrides keep the template


def test_bad_templated_recipes_are_refused():
    with pytest.raises(ValueError, match="unknown prompt template"):
        TemplatedRecipe(task="attributes", template="chatml")
    with pytest.raises(ValueError, match="shape task"):
        TemplatedRecipe(task="shape", template="roles")
    with pytest.raises(ValueError, match="must end with"):
        apply_template("USER: <image>\nwhat is it ? ASSISTANT: It is a", "roles")
    with pytest.raises(ValueError, match="unknown prompt template"):
        chat_template("nope")


def test_chat_template_renders_what_apply_template_writes():
    tok = build_toy_tokenizer("roles")
    content = [{"type": "image"}, {"type": "text", "text": "what is it ?"}]
    messages = [{"role": "user", "content": content}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == apply_template("USER: <image>\nwhat is it ? ASSISTANT:", "roles")
    assert text.endswith(ROLES_ENDING)
    assert apply_template("x ASSISTANT:", "llava") == "x ASSISTANT:"


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory):
    """A science_v2 toy of tiny size trained for 3 steps (seconds), with every prompt it was
    trained on (spied on the template function of the training loop)."""
    out = tmp_path_factory.mktemp("v2") / "seed0"
    seen = []

    def spy(prompt, template):
        seen.append(apply_template(prompt, template))
        return seen[-1]

    mp = pytest.MonkeyPatch()
    mp.setattr(train_module, "apply_template", spy)
    try:
        summary = train_toy(out, seed=0, steps=3, batch_size=8, preset="science_v2",
                            architecture=TINY, eval_n=4, log_every=1, verbose=False)  # fmt: skip
    finally:
        mp.undo()
    return out, summary, seen


def test_v2_trains_on_role_prompts_and_saves_their_template(tiny_v2):
    out, summary, seen = tiny_v2
    assert len(seen) == 3 * 8 and all(p.endswith(ROLES_ENDING) for p in seen)
    assert sum("<image>" in p for p in seen) == 3 * 6  # 6 image + 2 text prompts per step
    record = json.loads((out / "training.json").read_text())
    assert record["preset"] == "science_v2" and record["template"] == "roles"
    assert record["vision_init_seed"] == 0  # the shipped bundled tower for seed 0
    kinds = {f"{k}:{a}" for k in ("image", "text") for a in ATTRIBUTES}
    assert set(record["eval"]["acc"]) == kinds
    model = HookedLVLM.from_pretrained(out, device="cpu")
    assert (model.cfg.n_layers, model.cfg.n_heads) == (2, 4)
    # the saved chat template is the roles one: template="chat" gives the training prompts
    rec = attribute_records(1, 0, attributes=("colour",))[0]
    chat = model.prepare(rec.image, "what is the colour of the object ? answer with one word .",
                         rec.answer, template="chat")  # fmt: skip
    raw = model.prepare(rec.image, apply_template(attribute_image_prompt("colour"), "roles"),
                        rec.answer)  # fmt: skip
    assert torch.equal(chat.input_ids, raw.input_ids)
    # four role tokens between the last question token and the final ':'
    question = raw.groups["question"][0].nonzero().flatten()
    role = raw.groups["role"][0].nonzero().flatten()
    final = raw.groups["final"][0].nonzero().flatten()
    between = role[(role > question.max()) & (role < final.min())]
    assert len(between) == 4 and final.item() == raw.input_ids.shape[1] - 1
    assert between.tolist() == list(range(question.max() + 1, final.item()))


def test_v2_seed_reaches_the_weights(tmp_path, tiny_v2):
    out, _, _ = tiny_v2
    other = tmp_path / "seed1"
    train_toy(other, seed=1, steps=3, batch_size=8, preset="science_v2", architecture=TINY,
              eval_n=0, verbose=False, vision_dir=toy_checkpoint_path("bundled"))  # fmt: skip
    a = HookedLVLM.from_pretrained(out, device="cpu").hf_model.state_dict()
    b = HookedLVLM.from_pretrained(other, device="cpu").hf_model.state_dict()
    lm = [k for k in a if "language_model" in k and k.endswith("q_proj.weight")]
    assert lm and not any(torch.equal(a[k], b[k]) for k in lm)


def test_evaluation_reads_the_template_from_the_model(tiny_v2, monkeypatch):
    out, _, _ = tiny_v2
    model = HookedLVLM.from_pretrained(out, device="cpu")
    assert template_of(model.chat_template) == "roles"
    assert template_of(build_toy_tokenizer().chat_template) == "llava"
    prompts = []
    prepare = model.prepare

    def spy(images, texts, *args, **kwargs):
        prompts.extend(texts)
        return prepare(images, texts, *args, **kwargs)

    monkeypatch.setattr(model, "prepare", spy)
    evaluate_attributes(model, n=2, seed=3, attributes=("size",))
    assert len(prompts) == 4 and all(p.endswith(ROLES_ENDING) for p in prompts)


def test_v2_same_seed_same_weights_with_dropout_on(tmp_path, tiny_v2):
    """Attention dropout 0.1 is active in training: identical weights need the seeded stream."""
    out, _, _ = tiny_v2
    again = tmp_path / "again"
    train_toy(again, seed=0, steps=3, batch_size=8, preset="science_v2", architecture=TINY,
              eval_n=0, verbose=False)  # fmt: skip
    a = HookedLVLM.from_pretrained(out, device="cpu").hf_model.state_dict()
    b = HookedLVLM.from_pretrained(again, device="cpu").hf_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
