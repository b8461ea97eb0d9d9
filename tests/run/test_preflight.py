"""Flags checked against the machine before any work (issue 23 item 4): the device, seeds,
the mask count against memory; each a one-line CLI error, nothing written."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens.attribution.regression import fit_memory
from lvlm_lens.data.synthetic import CLASSES
from lvlm_lens.errors import OptionError
from lvlm_lens.run.preflight import check_device, check_mask_memory, mask_memory
from tests.helpers import noise_image
from tests.run.test_cli_errors import error_line


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
def test_a_missing_cuda_device_is_named_with_what_exists(capsys, tmp_path):
    line = error_line(capsys, ["attribute", "--device", "cuda:7", "--n-examples", "1",
                               "--no-rankings", "--out", str(tmp_path / "run")])  # fmt: skip
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert line.startswith("lvlm-lens: error: --device is cuda:7 but this machine has ")
    assert (f"{n} CUDA GPU(s)" if n else "no CUDA GPU: use cpu") in line
    assert not (tmp_path / "run").exists()


def test_a_device_that_is_no_device_is_refused():
    with pytest.raises(OptionError, match="'gpu0' is not a device"):
        check_device("gpu0")
    check_device("cpu")
    check_device(None)


@pytest.mark.parametrize("flag", ["--seed", "--data-seed"])
def test_a_seed_beyond_64_bits_names_the_flag(capsys, tmp_path, flag):
    line = error_line(capsys, ["attribute", flag, str(2**64), "--out", str(tmp_path / "run")])
    assert f"{flag} must be < 2**64" in line
    assert not (tmp_path / "run").exists()


def test_the_largest_64_bit_seed_works():
    gen = torch.Generator().manual_seed(2**64 - 1)  # what MAX_SEED promises
    assert torch.rand(1, generator=gen).shape == (1,)


def test_a_mask_count_that_cannot_fit_is_refused_with_the_count_that_fits():
    # 1 GiB available, half of it (2**29 = 536870912) budgeted; 144 heads, 10 examples. n masks:
    # masks + metrics (144 + 4*10)n; the chunked fit: a chunk of 1048576 // 144 = 7281 masks,
    # 40 bytes per element (40*7281*144 = 41938560), 160 bytes per (example, mask) row (1600n),
    # p x p matrices 12*8*144**2 = 1990656, per-example vectors 10*30*8*144 = 345600.
    # n = 276118: 1784*276118 + 44274816 = 536869328 <= 2**29; n = 276119: 536871112 > 2**29.
    fits = 276118
    check_mask_memory(fits, 144, 10, memory=2**30)
    with pytest.raises(OptionError, match=rf"n_masks is {fits + 1:,}: .* use at most {fits:,}$"):
        check_mask_memory(fits + 1, 144, 10, memory=2**30)
    with pytest.raises(OptionError, match=rf"use at most {fits:,}$"):
        check_mask_memory(10**9, 144, 10, memory=2**30)


def test_a_large_mask_count_fits_because_the_fit_is_chunked():
    # 20000 masks of 32x32 heads, 10 examples: the one-shot fit's float64 copies of the
    # training rows would need > 5 GiB (the check refused it at 1 GiB before the fit was
    # chunked); accumulated chunk by chunk the run needs < 200 MiB (benchmarks/fit_memory.py)
    assert fit_memory(20000, 1024, 10) > 5 * 2**30
    assert mask_memory(20000, 1024, 10) < 200 * 2**20
    check_mask_memory(20000, 1024, 10, memory=2**30)
    with pytest.raises(OptionError, match="ridge fit need"):
        check_mask_memory(20000, 1024, 10, memory=300 * 2**20)


def test_the_cli_refuses_an_impossible_mask_count_before_writing(capsys, tmp_path):
    line = error_line(capsys, ["attribute", "--num-masks", str(10**15), "--n-examples", "1",
                               "--no-rankings", "--out", str(tmp_path / "run")])  # fmt: skip
    assert "--num-masks is 1,000,000,000,000,000" in line and "use at most" in line
    assert not (tmp_path / "run").exists()


def test_a_prompt_without_its_placeholder_names_the_csv_row_before_any_compute(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        noise_image(32, 32, i).save(data / f"{i}.png")
    word = CLASSES[0]  # in the toy's vocabulary
    rows = ["0.png,USER: <image> what? A:", "1.png,USER: what? A:", "2.png,USER: <image> x A:"]
    (data / "data.csv").write_text("image,prompt,answer\n" + "".join(f"{r},{word}\n" for r in rows))
    line = error_line(capsys, ["attribute", "--data", str(data), "--no-rankings",
                               "--out", str(tmp_path / "run")])  # fmt: skip
    assert "data.csv row 2: the prompt holds 0 image placeholders; write '<image>'" in line
    assert not (tmp_path / "run").exists()
