"""Bad input to ``lvlm-lens`` ends with return code 2 and one line naming the input, no
traceback; ``--help`` documents every option with its default."""

from __future__ import annotations

import argparse
import re
import shutil

import pytest
import torch

from lvlm_lens.run.cli import build_parser, main, options_from_args
from lvlm_lens.run.job import load_model
from lvlm_lens.run.options import RunOptions
from tests.helpers import noise_image

PROMPT = '"USER: <image>\nwhat is this ? ASSISTANT:"'


def error_line(capsys, argv: list[str]) -> str:
    """Run the CLI, check it refused with one line, and return that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # progress bars or warnings may come before it
    assert last.startswith("lvlm-lens: error: "), err
    return last


def test_too_few_masks_names_the_flag_and_the_minimum(capsys, tmp_path):
    line = error_line(capsys, ["attribute", "--num-masks", "5", "--n-examples", "1",
                               "--no-rankings", "--out", str(tmp_path / "run")])  # fmt: skip
    assert "--num-masks must be >= 13" in line and "n_masks" not in line
    assert not (tmp_path / "run").exists()  # refused before anything ran


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--ablation-rate", "1.5", "--ablation-rate must lie in (0, 1)"),
        ("--seed", "-1", "--seed must be >= 0"),
        ("--data-seed", "-3", "--data-seed must be >= 0"),
        ("--chunk-masks", "0", "--chunk-masks must be >= 1"),
        ("--threads", "0", "--threads must be >= 1"),
        ("--baseline", "image", "--baseline-image is needed by the 'image' baseline"),
    ],
)
def test_range_errors_name_the_flag(capsys, tmp_path, flag, value, expected):
    line = error_line(capsys, ["attribute", flag, value, "--out", str(tmp_path / "run")])
    assert expected in line


def test_zero_synthetic_examples_says_what_happened(capsys, tmp_path):
    line = error_line(capsys, ["attribute", "--n-examples", "0", "--out", str(tmp_path / "x")])
    assert "--n-examples" in line and "synthetic" in line and "wrongly" not in line


def test_missing_model_folder(capsys, tmp_path):
    line = error_line(capsys, ["attribute", "--model", "/nonexistent", "--out", str(tmp_path)])
    assert "/nonexistent does not exist" in line


def test_model_folder_without_weights(capsys, tmp_path, tiny_checkpoint):
    folder = tmp_path / "noweights"
    shutil.copytree(tiny_checkpoint("llava-llama"), folder)
    (folder / "model.safetensors").unlink()
    line = error_line(capsys, ["attribute", "--model", str(folder), "--out", str(tmp_path / "o")])
    assert str(folder) in line and "no weights file" in line and "model.safetensors" in line


def test_processor_error_names_the_missing_file(capsys, tmp_path, tiny_checkpoint):
    folder = tmp_path / "noproc"
    shutil.copytree(tiny_checkpoint("llava-llama"), folder)
    (folder / "preprocessor_config.json").unlink(missing_ok=True)
    (folder / "processor_config.json").unlink()
    line = error_line(capsys, ["attribute", "--model", str(folder), "--out", str(tmp_path / "o")])
    # transformers 5 saves it as processor_config.json: name that file, not only the old name
    assert "image processor" in line and re.search(r"\bprocessor_config\.json", line)


def test_missing_image_in_data_csv(capsys, tmp_path, tiny_checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    noise_image(20, 20, 0).save(data / "a.png")
    (data / "data.csv").write_text(f"image,prompt,answer\na.png,{PROMPT},star\n"
                                   f"gone.png,{PROMPT},star\n")  # fmt: skip
    argv = ["attribute", "--model", str(tiny_checkpoint("llava-llama")), "--data", str(data)]
    line = error_line(capsys, [*argv, "--out", str(tmp_path / "o")])
    assert "data.csv row 2" in line and "gone.png" in line and "not found" in line


def test_out_pointing_at_a_file(capsys, tmp_path, tiny_checkpoint):
    (file := tmp_path / "afile").write_text("")
    argv = ["attribute", "--model", str(tiny_checkpoint("llava-llama")), "--n-examples", "1"]
    line = error_line(capsys, [*argv, "--out", str(file)])
    assert f"--out {file} is a file" in line


def test_threads_flag_sets_torchs_thread_count(tiny_checkpoint):
    args = build_parser().parse_args(["attribute", "--threads", "2"])
    assert options_from_args(args).threads == 2
    before = torch.get_num_threads()
    try:
        load_model(RunOptions(model=str(tiny_checkpoint("llava-llama")), threads=2, device="cpu"))
        assert torch.get_num_threads() == 2
        torch.set_num_threads(3)  # the default for a tiny model on the CPU is one thread
        load_model(RunOptions(model=str(tiny_checkpoint("llava-llama")), device="cpu"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _subparsers(sub)


def test_help_documents_every_option_with_its_default():
    for name, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
        text = sub.format_help()
        for action in sub._actions:
            no_default = action.default is None or action.default == argparse.SUPPRESS
            if action.option_strings and action.nargs != 0 and not no_default:
                assert f"(default: {action.default})" in " ".join(text.split()), (
                    f"{name} {action.option_strings[0]} does not show its default"
                )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--window", "0"], "argument --window: must be >= 1, got 0"),
        (["--window", "-3"], "argument --window: must be >= 1, got -3"),
        (["--metric", "foo"], "argument --metric: invalid choice: 'foo'"),
    ],
)
def test_knockout_flags_are_checked_before_the_model_loads(capsys, tmp_path, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        main(["knockout", *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lvlm-lens knockout: error: ") and expected in last
    assert not (tmp_path / "run").exists()
