"""Mistral 3 / Pixtral: the tokens of a left-padded batch = HF ``PixtralProcessor``'s expansion
of ``[IMG]``, and each image's grid follows its own size.

``transformers.models.pixtral.processing_pixtral`` imports torchvision, which is not installed,
so the reference is HF's own ``PixtralProcessor.replace_image_token``, compiled from that
module's source alone and called with the processor's attributes (``patch_size`` the tower's,
``spatial_merge_size`` the config's, its default marker tokens), over the PIL image
processor's ``image_sizes``."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lvlm_lens import HookedLVLM
from tests.helpers import noise_image

PROMPTS = ["what is this ?", "what is the main object ?"]
#: (height, width) of the two images: 20x28 px stays (5x7 tokens); 40x24 px is resized to a
#: longest side of 32 px (32x19), rounded up to 32x20 (8x5 tokens).
IMAGES = [noise_image(20, 28, 1), noise_image(40, 24, 2)]


def hf_replace_image_token():
    """HF's ``PixtralProcessor.replace_image_token``, without importing its module."""
    spec = importlib.util.find_spec("transformers.models.pixtral")
    source = (Path(spec.origin).parent / "processing_pixtral.py").read_text()
    cls = next(n for n in ast.parse(source).body
               if isinstance(n, ast.ClassDef) and n.name == "PixtralProcessor")  # fmt: skip
    fn = next(n for n in cls.body if getattr(n, "name", "") == "replace_image_token")
    namespace: dict = {}
    exec(compile(ast.Module([fn], []), "processing_pixtral.py", "exec"), namespace)
    return namespace["replace_image_token"]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("mistral3", chat_template=True))


def test_input_ids_are_the_pixtral_processors_expansion(model):
    inp = model.prepare(IMAGES, PROMPTS, template="chat")
    tok, vc = model.tokenizer, model.hf_model.config
    processor = SimpleNamespace(
        patch_size=vc.vision_config.patch_size, spatial_merge_size=vc.spatial_merge_size,
        image_token="[IMG]", image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]",
    )  # fmt: skip
    # what PixtralProcessor asks of its image processor: sizes in multiples of the merged patch
    side = processor.patch_size * processor.spatial_merge_size
    images = model.image_processor(images=IMAGES, return_tensors="pt",
                                   patch_size={"height": side, "width": side})  # fmt: skip
    assert images["image_sizes"].tolist() == [[20, 28], [32, 20]]
    assert torch.equal(inp.image_sizes, images["image_sizes"])
    assert torch.equal(inp.pixel_values, images["pixel_values"])
    replace = hf_replace_image_token()
    for i, prompt in enumerate(PROMPTS):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                     "text": prompt}]}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == f"<s>[INST][IMG]{prompt}[/INST]" and inp.texts[i] == text
        expanded = text.replace("[IMG]", replace(processor, images, i))
        expected = tok(expanded, add_special_tokens=False).input_ids
        real = inp.attention_mask[i].bool()
        assert inp.input_ids[i][real].tolist() == expected
    counts = inp.groups["image"].sum(-1).tolist()
    assert counts == [5 * 7, 8 * 5] and inp.attention_mask[0, 0] == 0  # left-padded


def test_images_of_different_sizes_give_their_own_grids_as_hf_embeds_them(model):
    inp = model.prepare(IMAGES, ["USER: <image>\nwhat is this ? ASSISTANT:"] * 2)
    assert [tuple(c.amax(0)[1:] + 1) for c in inp.image_coords] == [(5, 7), (8, 5)]
    feats = model.hf_model.get_image_features(inp.pixel_values, inp.image_sizes).pooler_output
    assert [len(f) for f in feats] == [35, 40]
    ours = model.vision(inp)
    assert all(torch.equal(a, b) for a, b in zip(ours, feats, strict=True))


#: Two more sizes and their grids by hand (Pixtral's rule: scale down by the larger of
#: ``h/32``, ``w/32`` when over 1, floored, then round each side up to a 4-px merged patch):
#: 30x18 px is not resized, ceil(30/4) x ceil(18/4) = 8x5; 17x50 px scales by 50/32 to
#: floor(10.88) x 32 = 10x32 px, ceil(10/4) x ceil(32/4) = 3x8.
GRIDS = {(30, 18): (8, 5), (17, 50): (3, 8)}


def test_to_str_tokens_names_each_img_token_by_its_row_and_column(model):
    """Between ``[INST]`` and the prompt, image ``k`` reads ``rows`` rows of ``<img r,c>`` for
    ``c < cols``, each row closed by ``[IMG_BREAK]``, the last by ``[IMG_END]``: the ``[IMG]``
    runs between the breaks are the grid, row by row."""
    sizes = list(GRIDS)
    inp = model.prepare([noise_image(h, w, k) for k, (h, w) in enumerate(sizes)], PROMPTS,
                        template="chat")  # fmt: skip
    for i, size in enumerate(sizes):
        rows, cols = GRIDS[size]
        strs = model.to_str_tokens(inp, index=i)
        start, end = strs.index("[INST]") + 1, strs.index("[IMG_END]")
        image = strs[start : end + 1]
        want = [t for r in range(rows)
                for t in [f"<img {r},{c}>" for c in range(cols)] + ["[IMG_BREAK]"]]  # fmt: skip
        want[-1] = "[IMG_END]"
        assert image == want
        # the geometry read back from the token ids: runs of [IMG] between the markers
        ids = inp.input_ids[i][inp.attention_mask[i].bool()].tolist()
        img, brk, fin = (model.tokenizer.convert_tokens_to_ids(t)
                         for t in ("[IMG]", "[IMG_BREAK]", "[IMG_END]"))  # fmt: skip
        runs = "".join("i" if t == img else "|" if t in (brk, fin) else " " for t in ids)
        assert runs.split()[0].split("|")[:-1] == ["i" * cols] * rows
        assert model.vision.grid(inp.image_sizes[i].tolist()) == (rows, cols)
        assert int(inp.groups["image"][i].sum()) == rows * cols
