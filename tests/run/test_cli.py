"""The command line: --help, a SIGKILL in the middle of a run, and torchrun sharding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.results import AttributionResult
from lvlm_lens.run.cli import main
from tests.helpers import write_data_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
RUN = {"env": ENV, "check": True, "capture_output": True, "timeout": 600}  # no test hangs


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    return write_data_folder(tmp_path_factory.mktemp("data"), 4)


def attribute_args(model, data, out, n_masks=400):
    return [
        "attribute",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--num-masks",
        str(n_masks),
        "--chunk-masks",
        "16",
        "--batch-size",
        "8",
        "--ablation-rate",
        "0.2",
        "--baseline",
        "blank",
        "--keep-wrong",
        "--no-rankings",
        "--n-examples",
        "0",
    ]


@pytest.mark.parametrize("command", [[], ["attribute"], ["knockout"], ["report"], ["toy", "train"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: lvlm-lens" in capsys.readouterr().out


def cli(*args):
    return [sys.executable, "-m", "lvlm_lens.run.cli", *args]


def test_sigkill_and_resume_gives_identical_attributions(tiny_checkpoint, data_folder, tmp_path):
    model = tiny_checkpoint("llava-llama")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(*attribute_args(model, data_folder, killed)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240  # a generous wait: CI machines can be heavily loaded
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed / "chunks").glob("*.safetensors"))) >= 12:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = len(list((killed / "chunks").glob("*.safetensors")))
    assert 0 < done < 4 * 25, "the run must be killed in the middle"
    assert not (killed / "attribution").exists()
    subprocess.run(
        cli(*attribute_args(model, data_folder, killed)), **RUN
    )
    whole = tmp_path / "whole"
    subprocess.run(
        cli(*attribute_args(model, data_folder, whole)), **RUN
    )
    a, b = (
        AttributionResult.load(killed / "attribution"),
        AttributionResult.load(whole / "attribution"),
    )
    assert torch.equal(a.metrics, b.metrics) and torch.equal(a.coef, b.coef)
    assert not list(killed.rglob(".*.tmp"))  # no half-written files were left behind


def test_changed_argument_is_refused(tiny_checkpoint, data_folder, tmp_path):
    model = tiny_checkpoint("llava-llama")
    out = tmp_path / "run"
    subprocess.run(
        cli(*attribute_args(model, data_folder, out, 32)), **RUN
    )
    again = subprocess.run(
        cli(*attribute_args(model, data_folder, out, 48)), **RUN | {"check": False, "text": True}
    )
    assert again.returncode != 0 and "n_masks" in again.stderr and "--overwrite" in again.stderr
    # --overwrite recognises everything a full run wrote (report, figures, views) as its own
    subprocess.run(cli(*attribute_args(model, data_folder, out, 48), "--overwrite"), **RUN)
    assert json.loads((out / "run.json").read_text())["attribution"]["n_masks"] == 48


def test_torchrun_two_processes_equal_one(tiny_checkpoint, data_folder, tmp_path):
    model = tiny_checkpoint("llava-llama")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        cli(*attribute_args(model, data_folder, one, 64)), **RUN
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            "-m",
            "lvlm_lens.run.cli",
            *attribute_args(model, data_folder, two, 64),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = AttributionResult.load(one / "attribution"), AttributionResult.load(two / "attribution")
    assert torch.allclose(a.metrics, b.metrics, atol=1e-5)
    assert torch.allclose(a.coef, b.coef, atol=1e-4)
    files = sorted(p.name for p in (two / "chunks").iterdir())
    assert files == sorted(p.name for p in (one / "chunks").iterdir())


@pytest.mark.parametrize(
    "kind", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "gemma3", "internvl", "idefics3", "qwen3-vl-moe",
             "llava-onevision-1.5", "qwen3.5", "paligemma2", "smolvlm2", "glm4v",
             "glm4v-moe", "llama4", "mistral3",
             "mllama",
             "gemma4"]
)
def test_attribute_runs_on_every_family(tiny_checkpoint, data_folder, tmp_path, kind):
    """The data's LLaVA-style prompts hold ``<image>``, which every family accepts."""
    folder = tiny_checkpoint(kind, chat_template=True)
    args = attribute_args(folder, data_folder, tmp_path / "run", n_masks=48)
    assert main(args) in (0, None)
    result = AttributionResult.load(tmp_path / "run" / "attribution")
    model = HookedLVLM.from_pretrained(folder)
    assert result.coef.shape == (4, model.cfg.n_layers, model.cfg.n_heads)
    assert torch.isfinite(result.coef).all() and result.metrics.std() > 0
    assert (tmp_path / "run" / "report.html").stat().st_size > 0
