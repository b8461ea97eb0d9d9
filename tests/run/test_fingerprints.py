"""Content fingerprints: an edited data row is recomputed alone; a retrained model folder or a
changed baseline image is never reused (issue 23 item 2)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lvlm_lens import HookedLVLM
from lvlm_lens.errors import RunError
from lvlm_lens.run.runner import run_attribution
from lvlm_lens.run.store import chunk_path, prediction_path
from tests.helpers import noise_image
from tests.run.test_runner import Rec, options, records


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))


def _own_answer(model, rec):
    with torch.no_grad():
        guess = model(model.prepare(rec.image, rec.prompt))[0, -1].argmax()
    rec.answer = model.tokenizer.convert_ids_to_tokens(int(guess))
    return rec


def test_an_edited_row_is_recomputed_and_only_it(model, tmp_path):
    recs = records(model)
    refs = [noise_image(20, 20, 50)]
    first = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    out = first.out
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()}
    stamps |= {f"pred{i}": prediction_path(out, i).stat().st_mtime_ns for i in range(3)}
    # the user replaces row 1's image (same id, prompt and file layout)
    recs[1] = _own_answer(model, Rec(noise_image(20, 20, 77), recs[1].prompt, "", "ex1"))
    with pytest.warns(UserWarning, match=r"recomputed 1 example\(s\).*: example 1 \(id 'ex1'\)$"):
        second = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    fresh = run_attribution(model, recs, options(tmp_path / "fresh"), reference_images=refs)
    assert torch.equal(second.metrics, fresh.metrics)
    assert not torch.equal(second.metrics[1], first.metrics[1])
    for i in (0, 2):  # untouched rows: their files were not rewritten
        assert prediction_path(out, i).stat().st_mtime_ns == stamps[f"pred{i}"]
        for c in range(3):
            assert chunk_path(out, i, c).stat().st_mtime_ns == stamps[chunk_path(out, i, c).name]
    assert chunk_path(out, 1, 0).stat().st_mtime_ns != stamps[chunk_path(out, 1, 0).name]


def test_an_edited_answer_is_recomputed(model, tmp_path):
    recs = records(model, 2)
    refs = [noise_image(20, 20, 50)]
    run_attribution(model, recs, options(tmp_path, keep_wrong=True), reference_images=refs)
    answer_id = model.tokenizer.convert_tokens_to_ids(recs[0].answer)
    recs[0].answer = model.tokenizer.convert_ids_to_tokens((answer_id + 1) % 50)
    with pytest.warns(UserWarning, match=r"example 0 \(id 'ex0'\)$"):
        second = run_attribution(model, recs, options(tmp_path, keep_wrong=True),
                                 reference_images=refs)  # fmt: skip
    info = json.loads(prediction_path(second.out, 0).read_text())
    assert info["answer"] == recs[0].answer and not info["correct"]


def test_a_retrained_model_folder_is_not_reused(model, tiny_checkpoint, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("llava-llama"), folder)
    recs, refs = records(model, 1), [noise_image(20, 20, 50)]
    run_attribution(model, recs, options(tmp_path, model=str(folder)), reference_images=refs)
    run_attribution(model, recs, options(tmp_path, model=str(folder)), reference_images=refs)
    weights = next(folder.glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0  # "retrained": same names, sizes and shapes
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(RunError, match=rf"inputs\.model_files\.{weights.name}"):
        run_attribution(model, recs, options(tmp_path, model=str(folder)), reference_images=refs)


def test_a_changed_baseline_image_is_not_reused(model, tmp_path):
    image = tmp_path / "base.png"
    noise_image(20, 20, 5).save(image)
    recs, refs = records(model, 1), [noise_image(20, 20, 50)]
    run_attribution(model, recs, options(tmp_path, baseline_image=str(image)),
                    reference_images=refs)  # fmt: skip
    noise_image(20, 20, 6).save(image)
    with pytest.raises(RunError, match=r"inputs\.baseline_image"):
        run_attribution(model, recs, options(tmp_path, baseline_image=str(image)),
                        reference_images=refs)  # fmt: skip
