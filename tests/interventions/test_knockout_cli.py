"""``lvlm-lens knockout`` refuses a device the machine lacks in the same one line as
``attribute`` (naming --device and what exists), before the model loads or --out is written
(issue 23 item 4)."""

from __future__ import annotations

import pytest
import torch

from tests.run.test_cli_errors import error_line


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
def test_knockout_names_a_missing_cuda_device_and_what_exists(capsys, tmp_path):
    out = tmp_path / "run"
    line = error_line(capsys, ["knockout", "--device", "cuda:7", "--out", str(out)])
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert line.startswith("lvlm-lens: error: --device is cuda:7 but this machine has ")
    assert (f"{n} CUDA GPU(s): cuda:0 to cuda:{n - 1}" if n else "no CUDA GPU: use cpu") in line
    assert not out.exists()


def test_knockout_refuses_a_name_that_is_no_device(capsys, tmp_path):
    line = error_line(capsys, ["knockout", "--device", "gpu0", "--out", str(tmp_path / "run")])
    assert line == "lvlm-lens: error: --device 'gpu0' is not a device: use cpu, cuda or cuda:N"
