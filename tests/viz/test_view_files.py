"""A damaged example-view image under a run's ``views`` folder is named itself, with what to
rerun, in one line (issue 23 item 5)."""

from __future__ import annotations

from lvlm_lens.run.cli import main
from tests.run.test_cli_errors import error_line
from tests.run.test_run_files import finished_run  # noqa: F401 (fixture)


def test_report_names_the_damaged_view_png_itself(capsys, finished_run):  # noqa: F811
    path = finished_run / "views" / "00.png"
    saved = path.read_bytes()
    try:
        path.write_bytes(saved[: len(saved) // 2])  # truncated: the header still opens
        line = error_line(capsys, ["report", "--out", str(finished_run)])
        assert line.startswith(f"lvlm-lens: error: {path} is damaged (")
        assert "run the same `lvlm-lens attribute`" in line
    finally:
        path.write_bytes(saved)
    assert main(["report", "--out", str(finished_run)]) == 0
