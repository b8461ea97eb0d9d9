"""Synthetic data, prompts, patch masks and the folder / HF dataset loaders."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from lvlm_lens.data import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    IMAGE_QUESTIONS,
    POSITIONS,
    TEXT_QUESTIONS,
    VOCABULARY,
    Record,
    generate_dataset,
    image_prompt,
    load_folder,
    load_hf_dataset,
    patch_grid_mask,
    synthetic_records,
    text_prompt,
)
from lvlm_lens.testing.tiny import build_tiny_tokenizer


@pytest.fixture(scope="module")
def examples():
    return generate_dataset(96, seed=7)


def test_generate_is_deterministic_per_seed():
    a, b, c = generate_dataset(12, 3), generate_dataset(12, 3), generate_dataset(12, 4)
    for x, y in zip(a, b, strict=True):
        assert x.label == y.label and x.appearance == y.appearance
        assert x.description == y.description
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
        assert np.array_equal(x.mask, y.mask)
    assert any(
        not np.array_equal(np.asarray(x.image), np.asarray(z.image))
        for x, z in zip(a, c, strict=True)
    )


@pytest.mark.parametrize("n", [96, 83])
def test_classes_are_balanced(n):
    counts = Counter(ex.label for ex in generate_dataset(n, seed=1))
    assert set(counts) == set(CLASSES)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_appearance_varies_and_is_described(examples):
    assert len(CLASSES) >= 6 and len(COLOURS) >= 6
    for key, values in {
        "colour": COLOURS,
        "background": BACKGROUNDS,
        "position": POSITIONS,
    }.items():
        assert {ex.appearance[key] for ex in examples} == set(values)
    assert {ex.appearance["size"] for ex in examples} == {"small", "large"}
    assert {ex.appearance["fill"] for ex in examples} == {"filled", "outline"}
    assert {ex.appearance["texture"] for ex in examples} == {"plain", "stripes", "dots"}
    for ex in examples:
        assert ex.image.mode == "RGB" and ex.image.size == (48, 48)
        words = ex.description.split()
        assert words[:3] == ["a", ex.appearance["size"], ex.appearance["colour"]]
        assert words[-1] == ex.label
        assert ("outlined" in words) == (ex.appearance["fill"] == "outline")


def test_masks_are_nonempty_inside_and_cover_the_object(examples):
    for ex in examples:
        assert ex.mask.dtype == bool and ex.mask.shape == (48, 48)
        assert ex.mask.sum() >= 20
        border = np.concatenate([ex.mask[0], ex.mask[-1], ex.mask[:, 0], ex.mask[:, -1]])
        assert not border.any()  # the whole object lies inside the image
        if ex.appearance["texture"] == "plain" and ex.appearance["background"] != "noise":
            # mask pixels are at least half object colour, the others at most half
            pixels = np.asarray(ex.image).astype(int)
            to_obj = np.abs(pixels - np.array(COLOURS[ex.appearance["colour"]])).sum(-1)
            to_bg = np.abs(pixels - pixels[0, 0]).sum(-1)
            slack = 45  # colour jitter: up to 15 per channel
            assert (to_obj[ex.mask] <= to_bg[ex.mask] + slack).all()
            assert (to_bg[~ex.mask] <= to_obj[~ex.mask] + slack).all()


def test_patch_grid_mask_threshold_and_shape():
    mask = np.zeros((48, 48), dtype=bool)
    mask[0:8, 0:8] = True  # a whole patch
    mask[8:12, 8:12] = True  # exactly 25 % of patch (1, 1)
    mask[0:3, 16:19] = True  # 9 / 64 of patch (0, 2)
    grid = patch_grid_mask(mask, 6)
    assert grid.shape == (6, 6) and grid.dtype == torch.bool
    assert grid[0, 0] and grid[1, 1] and not grid[0, 2]
    assert int(grid.sum()) == 2
    assert patch_grid_mask(torch.from_numpy(mask), (3, 2)).shape == (3, 2)
    assert not patch_grid_mask(mask, 6, threshold=0.5)[1, 1]
    # center crop of a wide mask keeps its central square
    wide = np.zeros((48, 96), dtype=bool)
    wide[:, 24:32] = True
    assert patch_grid_mask(wide, 6, center_crop=True)[:, 0].all()
    with pytest.raises(ValueError, match="H, W"):
        patch_grid_mask(np.zeros((2, 4, 4), dtype=bool), 6)


def test_object_patches_overlap_the_drawn_object(examples):
    for ex in examples:
        grid = patch_grid_mask(ex.mask, 6)
        assert grid.any()
        frac = torch.from_numpy(ex.mask.reshape(6, 8, 6, 8).mean(axis=(1, 3)))
        assert (frac[grid] >= 0.25).all() and (frac[~grid] < 0.25).all()
        # most object pixels fall in object patches (filled shapes) / some do (outlines)
        in_patches = grid.repeat_interleave(8, 0).repeat_interleave(8, 1).numpy() & ex.mask
        need = 0.5 if ex.appearance["fill"] == "filled" else 0.1
        assert in_patches.sum() >= need * ex.mask.sum()


def test_prompts_use_the_vocabulary(examples):
    tok = build_tiny_tokenizer(words=VOCABULARY)
    unk = tok.convert_tokens_to_ids("<unk>")
    assert len(IMAGE_QUESTIONS) == len(TEXT_QUESTIONS) >= 3
    for i, q in enumerate(IMAGE_QUESTIONS):
        assert q == image_prompt(i) and q.count("<image>") == 1
        assert q.startswith("USER: <image>\n") and "ASSISTANT:" in q
        assert unk not in tok(q).input_ids
    for ex in examples[:20]:
        for i in range(len(TEXT_QUESTIONS)):
            p = text_prompt(ex, i)
            assert "<image>" not in p and ex.description in p
            assert unk not in tok(p).input_ids
    for c in CLASSES:
        assert len(tok(c, add_special_tokens=False).input_ids) == 1
    ex = examples[0]
    assert text_prompt("a small red star", 1) == (
        "USER: the picture shows a small red star . what is the main object ? ASSISTANT:"
    )
    assert text_prompt(ex) == text_prompt(ex.description)


def test_synthetic_records():
    recs = synthetic_records(10, seed=5)
    exs = generate_dataset(10, seed=5)
    assert all(isinstance(r, Record) for r in recs)
    assert len({r.id for r in recs}) == 10
    for r, ex in zip(recs, exs, strict=True):
        assert r.prompt == image_prompt() and r.answer == ex.label == r.meta["label"]
        assert np.array_equal(r.mask, ex.mask)
        assert r.load_image().size == (48, 48)


# -- real data ---------------------------------------------------------------------------------


def _images(folder, n=3, size=(40, 30)):
    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.new("RGB", size, (10 * i, 20, 30)).save(folder / name)
        names.append(name)
    return names


def test_load_folder_csv(tmp_path):
    names = _images(tmp_path)
    m = np.zeros((30, 40), dtype=np.uint8)
    m[5:10, 6:12] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    (tmp_path / "data.csv").write_text(
        "image,prompt,answer,bbox,mask,id\n"
        f'{names[0]},"USER: <image>\nwhat is it ? ASSISTANT:",cat,"1,2,11,12",,a\n'
        f"{names[1]},USER: <image> hi ASSISTANT:,dog,,m.png,b\n"
        f"{names[2]},USER: <image> hi ASSISTANT:, bird ,,,c\n"
    )
    recs = load_folder(tmp_path)
    assert [r.id for r in recs] == ["a", "b", "c"]
    assert [r.answer for r in recs] == ["cat", "dog", "bird"]
    assert recs[0].prompt == "USER: <image>\nwhat is it ? ASSISTANT:"
    assert recs[0].image == tmp_path / names[0] and recs[0].load_image().size == (40, 30)
    assert recs[0].mask.shape == (30, 40) and recs[0].mask.sum() == 100
    assert recs[0].mask[2:12, 1:11].all() and recs[0].meta["bbox"] == (1, 2, 11, 12)
    assert np.array_equal(recs[1].mask, m > 0)
    assert recs[2].mask is None
    # the CSV file itself works too
    assert len(load_folder(tmp_path / "data.csv")) == 3


def test_load_folder_jsonl(tmp_path):
    names = _images(tmp_path, 2)
    sub = tmp_path / "sub"
    sub.mkdir()
    rows = [
        {"image": f"../{names[0]}", "prompt": "USER: <image>\nq ASSISTANT:", "answer": "x",
         "bbox": [0, 0, 40, 30]},
        {"image": str(tmp_path / names[1]), "prompt": "USER: <image>\nq ASSISTANT:",
         "answer": "y"},
    ]  # fmt: skip
    (sub / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    recs = load_folder(sub)
    assert [r.id for r in recs] == ["0", "1"]
    assert recs[0].mask.all() and recs[1].mask is None


def test_load_folder_errors(tmp_path):
    names = _images(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match="neither data.csv nor data.jsonl"):
        load_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "nope")

    def csv(text):
        (tmp_path / "data.csv").write_text(text)

    csv(f"image,answer\n{names[0]},cat\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['prompt'\]"):
        load_folder(tmp_path)
    csv("image,prompt,answer\nmissing.png,USER: <image> ASSISTANT:,cat\n")
    with pytest.raises(FileNotFoundError, match="row 1: image file .*missing.png"):
        load_folder(tmp_path)
    csv(f"image,prompt,answer\n{names[0]},USER: <image> ASSISTANT:,\n")
    with pytest.raises(ValueError, match="empty 'answer'"):
        load_folder(tmp_path)
    csv(f'image,prompt,answer,bbox\n{names[0]},p,cat,"0,0,50,10"\n')
    with pytest.raises(ValueError, match="outside the 40x30 image"):
        load_folder(tmp_path)
    csv(f"image,prompt,answer,bbox\n{names[0]},p,cat,nonsense\n")
    with pytest.raises(ValueError, match="not 'x0,y0,x1,y1'"):
        load_folder(tmp_path)
    Image.new("L", (10, 10)).save(tmp_path / "small.png")
    csv(f"image,prompt,answer,mask\n{names[0]},p,cat,small.png\n")
    with pytest.raises(ValueError, match="mask is 10x10 but the image is 40x30"):
        load_folder(tmp_path)
    csv(f"image,prompt,answer,mask\n{names[0]},p,cat,gone.png\n")
    with pytest.raises(FileNotFoundError, match="mask file"):
        load_folder(tmp_path)
    csv(f"image,prompt,answer,id\n{names[0]},p,cat,k\n{names[0]},p,dog,k\n")
    with pytest.raises(ValueError, match="duplicate id 'k'"):
        load_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    csv("image,prompt,answer\nnotes.txt,p,cat\n")
    with pytest.raises(ValueError, match="not a readable image"):
        load_folder(tmp_path)
    (tmp_path / "data.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="both data.csv and data.jsonl"):
        load_folder(tmp_path)
    (tmp_path / "data.csv").unlink()
    with pytest.raises(ValueError, match=r"line 1: missing field\(s\)"):
        load_folder(tmp_path)
    (tmp_path / "data.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1: invalid JSON"):
        load_folder(tmp_path)


def test_load_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (20, 16), (i * 50, 0, 0)) for i in range(3)]
    ds = datasets.Dataset.from_dict(
        {
            "img": images,
            "question": ["USER: <image>\nq ASSISTANT:"] * 3,
            "label": ["a", "b", "c"],
            "box": ["0,0,10,8", "2,2,4,4", "0,0,20,16"],
        }
    )
    recs = load_hf_dataset(ds, "img", "question", "label", bbox_column="box")
    assert [r.answer for r in recs] == ["a", "b", "c"] and [r.id for r in recs] == ["0", "1", "2"]
    assert recs[0].image.size == (20, 16) and recs[0].mask.sum() == 80
    # a DatasetDict, a fixed prompt and save_to_disk folders
    dd = datasets.DatasetDict({"test": ds})
    recs = load_hf_dataset(dd, "img", None, "label", split="test", prompt="P <image>", limit=2)
    assert len(recs) == 2 and recs[0].prompt == "P <image>" and recs[0].mask is None
    ds.save_to_disk(str(tmp_path / "saved"))
    assert len(load_hf_dataset(tmp_path / "saved", "img", "question", "label")) == 3
    with pytest.raises(ValueError, match=r"missing column\(s\) \['answer'\]"):
        load_hf_dataset(ds, "img", "question", "answer")
    with pytest.raises(ValueError, match="no split 'train'"):
        load_hf_dataset(dd, "img", "question", "label")
    with pytest.raises(ValueError, match="prompt_column, or prompt="):
        load_hf_dataset(ds, "img", None, "label")


def test_load_hf_dataset_rescales_a_16_bit_image():
    """A 16-bit grey image at 128 * 257 is 8-bit grey 128, not white (``convert("RGB")`` alone
    clips every value above 255)."""
    datasets = pytest.importorskip("datasets")
    wide = Image.fromarray(np.full((8, 12), 128 * 257, dtype=np.uint16))
    ds = datasets.Dataset.from_dict({"image": [wide], "prompt": ["<image> q"], "answer": ["a"]})
    (rec,) = load_hf_dataset(ds)
    assert rec.image.mode == "RGB" and rec.image.size == (12, 8)
    assert np.asarray(rec.image).min() == np.asarray(rec.image).max() == 128
