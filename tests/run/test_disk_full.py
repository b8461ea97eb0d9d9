"""A full disk under a run (issue 23 item 5): one line naming the path, nothing half-written.
Needs a small tmpfs; skipped where ``mount`` is not allowed."""

from __future__ import annotations

import subprocess

import pytest

from tests.run.test_cli_errors import error_line


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_and_leaves_no_half_written_file(capsys, small_disk):
    out = small_disk / "run"
    line = error_line(capsys, ["attribute", "--n-examples", "3", "--num-masks", "400",
                               "--no-rankings", "--out", str(out)])  # fmt: skip
    assert "no space left on the device" in line and str(out) in line
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
