"""Damaged run files are named with what to do, never a permanent crash; user errors are one
line and ``--debug`` shows the traceback (issue 23 items 5 and 6)."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from lvlm_lens.errors import RunError
from lvlm_lens.run.cli import build_parser, main, user_message
from lvlm_lens.run.runner import run_attribution
from lvlm_lens.run.store import CheckpointFiles
from tests.helpers import noise_image
from tests.run.test_cli_errors import error_line
from tests.run.test_fingerprints import model  # noqa: F401 (fixture)
from tests.run.test_runner import options, records


def test_a_damaged_run_json_is_named_and_overwrite_recovers(model, tmp_path):  # noqa: F811
    recs, refs = records(model, 1), [noise_image(20, 20, 50)]
    first = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    (first.out / "run.json").write_text('{"n_examples": 2')
    with pytest.raises(RunError, match=r"run\.json is damaged .*pass --overwrite"):
        run_attribution(model, recs, options(tmp_path), reference_images=refs)
    again = run_attribution(model, recs, options(tmp_path), reference_images=refs,
                            overwrite=True)  # fmt: skip
    assert torch.equal(again.metrics, first.metrics)
    assert json.loads((again.out / "run.json").read_text())["n_examples"] == 24


@pytest.mark.parametrize("damage", ["cut", "not a prediction"])
def test_a_damaged_prediction_is_named_and_recomputed(model, tmp_path, damage):  # noqa: F811
    recs, refs = records(model, 2), [noise_image(20, 20, 50)]
    first = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    path = first.out / "examples" / "00001.json"
    saved = path.read_text()
    path.write_text(saved[: len(saved) // 2] if damage == "cut" else "[1, 2]")
    why = "is damaged" if damage == "cut" else "is not a prediction file"
    with pytest.warns(UserWarning, match=rf"00001\.json {why}.*computing it again"):
        again = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    assert json.loads(path.read_text()) == json.loads(saved)
    assert torch.equal(again.metrics, first.metrics)


def test_a_damaged_comparison_piece_is_named_removed_and_recomputed(tmp_path):
    store = CheckpointFiles(tmp_path / "comparison")
    store.save("single-head ablation/0-abc", {"scores": torch.ones(2, 3)})
    path = store.path("single-head ablation/0-abc")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.warns(UserWarning, match=r"0-abc\.safetensors is damaged .*computing it again"):
        assert store.load("single-head ablation/0-abc") is None
    assert not path.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["attribute", "--n-examples", "2", "--num-masks", "40", "--no-rankings",
                 "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.mark.parametrize(
    "name", ["attribution/attribution.safetensors", "attribution/attribution.json",
             "summary.json", "curves.safetensors", "views/views.json",
             "views/views.safetensors"],  # fmt: skip
)
def test_report_names_a_damaged_file_and_what_to_rerun(capsys, finished_run, name):
    path = finished_run / name
    saved = path.read_bytes()
    try:
        path.write_bytes(saved[: len(saved) // 3])
        line = error_line(capsys, ["report", "--out", str(finished_run)])
        assert f"{path} is damaged" in line and "run the same `lvlm-lens attribute`" in line
    finally:
        path.write_bytes(saved)
    assert main(["report", "--out", str(finished_run)]) == 0


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    argv = ["report", "--out", str(tmp_path / "none")]
    assert main(argv) == 2 and "has no summary.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no summary.json"):
        main(["--debug", *argv])
    monkeypatch.setenv("LVLM_LENS_DEBUG", "1")
    with pytest.raises(ValueError, match="has no summary.json"):
        main(argv)


def test_a_full_disk_is_one_line_with_the_path_and_a_bug_is_not():
    parser = build_parser()
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/chunks/x.safetensors")
    assert user_message(full, parser, "attribute").startswith(
        "/runs/a/chunks/x.safetensors: no space left on the device"
    )
    assert user_message(KeyError("bug"), parser, "attribute") is None
    assert user_message(OSError(errno.EIO, "I/O error"), parser, "attribute") is None
