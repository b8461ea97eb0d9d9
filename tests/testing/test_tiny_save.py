"""tiny_save.tiny_builder: every override reaches the part it names, and the model is the
seeded draw (the three family builders made with it feed both sides of the HF equivalences)."""

from __future__ import annotations

import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lvlm_lens.testing.tiny_save import tiny_builder


class _Saved:
    """A stand-in tokenizer / processor that records what it was built with and saves it."""

    def __init__(self, what: str, **fields):
        self.what, self.fields = what, fields

    def save_pretrained(self, folder):
        state = self.fields | {k: v for k, v in vars(self).items() if k != "fields"}
        (folder / f"{self.what}.json").write_text(json.dumps(state, sort_keys=True))


def _config(tokenizer, text, vision):
    return LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                       num_key_value_heads=2, num_hidden_layers=text.get("num_hidden_layers", 1),
                       max_position_embeddings=64, **{"vision_note": vision.get("note", "none"),
                       "chat": tokenizer.fields["chat"]})  # fmt: skip


def test_overrides_reach_their_part_and_the_draw_is_seeded(tmp_path):
    inits = []
    build = tiny_builder("Stand-in", LlamaForCausalLM, lambda chat: _Saved("tok", chat=chat),
                         _config, lambda: _Saved("proc", size=4), init=inits.append)  # fmt: skip
    assert build.__doc__.startswith("Builds and saves the tiny Stand-in")
    a = build(tmp_path / "a", seed=5, chat_template=True, vision={"note": "v"},
              lvlm={"rms_norm_eps": 0.125}, processor={"size": 9}, num_hidden_layers=2)
    config = json.loads((a / "config.json").read_text())
    assert (config["num_hidden_layers"], config["vision_note"], config["chat"]) == (2, "v", True)
    assert config["rms_norm_eps"] == 0.125
    assert json.loads((a / "proc.json").read_text())["size"] == 9
    assert json.loads((a / "tok.json").read_text())["chat"] is True
    assert len(inits) == 1  # the family's own init ran once on the drawn model
    b = build(tmp_path / "b", seed=5, chat_template=False)
    c = build(tmp_path / "c", seed=6, chat_template=False)
    assert json.loads((b / "config.json").read_text())["num_hidden_layers"] == 1
    assert json.loads((b / "proc.json").read_text())["size"] == 4
    weights = [LlamaForCausalLM.from_pretrained(f).model.embed_tokens.weight for f in (b, c)]
    same = LlamaForCausalLM.from_pretrained(build(tmp_path / "d", seed=5, chat_template=False))
    assert torch.equal(weights[0], same.model.embed_tokens.weight)
    assert not torch.equal(weights[0], weights[1])
