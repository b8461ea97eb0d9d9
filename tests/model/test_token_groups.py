"""Token groups partition the real tokens on every prompt style and chat template supported."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.model.inputs import GROUP_NAMES
from tests.helpers import noise_image

PARTITION = ("bos", "system", "role", "image", "question", "final")

# (kind, chat template saved, template mode, prompt, system, question words, final token)
CASES = [
    ("llava-llama", False, "raw", "USER: <image>\nwhat is this ? ASSISTANT:", None,
     "what is this ?", ":"),
    ("llava-llama", False, "raw", "a helpful assistant . USER: <image>\nwhat is this ? ASSISTANT:",
     None, "what is this ?", ":"),
    ("llava-llama", False, "raw", "<image>\nwhat is the main object ?", None,
     "what is the main object", "?"),
    ("llava-llama", False, "chat", "what is this ?", None, "what is this ?", ":"),
    ("llava-llama", True, "chat", "what is this ?", "you are helpful .", "what is this ?", ":"),
    ("llava-next-mistral", True, "chat", "what is the color ?", None, "what is the color ?", ":"),
    ("llava-next-vicuna", False, "raw",
     "you are helpful . USER: <image>\nwhat is this ? ASSISTANT:", None, "what is this ?", ":"),
    ("llava-next-mistral", False, "raw", "[INST] <image>\nwhat is this ? [/INST]", None,
     "what is this ?", "<unk>"),  # "]" is not in the tiny vocabulary
    ("llava-onevision-qwen2", True, "chat", "what is the main object ?", "you are helpful .",
     "what is the main object ?", "\n"),
    ("llava-onevision-qwen2", True, "chat", "what is this ?", None, "what is this ?", "\n"),
    ("llava-onevision-qwen2", False, "raw",
     "<|im_start|>user\n<image>\nwhat is this ?<|im_end|>\n<|im_start|>assistant\n", None,
     "what is this ?", "\n"),
]  # fmt: skip


def _tokens(model, inp, group, index):
    ids = inp.input_ids[index][inp.groups[group][index]]
    return model.tokenizer.convert_ids_to_tokens(ids.tolist())


@pytest.mark.parametrize(
    ("kind", "saved", "template", "prompt", "system", "question", "final"), CASES
)
def test_groups_partition_every_real_token(
    tiny_checkpoint, kind, saved, template, prompt, system, question, final
):
    model = HookedLVLM.from_pretrained(tiny_checkpoint(kind, chat_template=saved))
    short = "USER: <image>\nwhat ? ASSISTANT:" if template == "raw" else "what ?"
    if template == "raw" and "USER" not in prompt:
        short = prompt  # a batch of one style; padding comes from the longer image below
    images = [noise_image(20, 20, 1), noise_image(24, 36, 2)]
    inp = model.prepare(images, [prompt, short], template=template, system=system)
    assert set(inp.groups) == set(GROUP_NAMES)
    real = inp.attention_mask.bool()
    stacked = torch.stack([inp.groups[g] for g in PARTITION]).int()
    assert torch.equal(stacked.sum(0), real.int()), "every real token in exactly one group"
    assert torch.equal(inp.groups["text"], real & ~inp.groups["image"])
    for i in range(len(inp)):
        last = int(real[i].nonzero().max())
        assert inp.groups["final"][i].nonzero().flatten().tolist() == [last]
        assert not inp.groups["role"][i, last]
    assert _tokens(model, inp, "question", 0) == question.split()
    assert _tokens(model, inp, "final", 0) == [final]
    if system:
        assert _tokens(model, inp, "system", 0) == system.split()
    n_image = int(inp.groups["image"].sum())
    assert n_image == sum(c.shape[0] for c in inp.image_coords)


def test_a_prompt_ending_with_an_image_keeps_that_token_in_image(tiny_checkpoint):
    """The only overlap: image tokens stay image tokens, so counts match the embeddings."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))
    inp = model.prepare(noise_image(20, 20), "USER: what is this ? ASSISTANT: <image>")
    assert bool(inp.groups["final"][0, -1]) and bool(inp.groups["image"][0, -1])
    assert int(inp.groups["image"].sum()) == inp.image_coords[0].shape[0]
    assert _tokens(model, inp, "role", 0) == ["USER", ":", "ASSISTANT", ":"]


@pytest.mark.parametrize(
    "kind", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "gemma3", "internvl", "idefics3",
             "qwen3-vl-moe", "llava-onevision-1.5", "smolvlm2", "glm4v",
             "glm4v-moe", "llama4", "mistral3",
             "gemma4"]
)
def test_groups_partition_the_chat_templates_of_the_other_families(tiny_checkpoint, kind):
    """The same partition with each family's own chat template, a system prompt and a
    left-padded batch of two images of different sizes."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint(kind, chat_template=True))
    images = [noise_image(20, 28, 1), noise_image(30, 18, 2)]
    inp = model.prepare(images, ["what is the main object ?", "what ?"], template="chat",
                        system="you are helpful .")  # fmt: skip
    real = inp.attention_mask.bool()
    stacked = torch.stack([inp.groups[g] for g in PARTITION]).int()
    assert torch.equal(stacked.sum(0), real.int()), "every real token in exactly one group"
    for i in range(len(inp)):
        last = int(real[i].nonzero().max())
        assert inp.groups["final"][i].nonzero().flatten().tolist() == [last]
    assert _tokens(model, inp, "question", 0) == "what is the main object ?".split()
    assert _tokens(model, inp, "question", 1) == ["what", "?"]
    assert _tokens(model, inp, "system", 0) == "you are helpful .".split()
