"""The TransformerLens guide's parity table is the one the tests declare (``@parity``), so the
guide cannot claim what no test checks, nor drop a row a test adds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.model import tl_parity

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "transformerlens.md"


def test_committed_table_is_the_rendered_one():
    page = GUIDE.read_text(encoding="utf-8")
    assert tl_parity.splice_table(page) == page, (
        "docs/guides/transformerlens.md: the parity table is stale; run "
        "python docs/scripts/tl_parity_table.py"
    )


def test_every_declaring_module_has_rows_and_every_row_a_test():
    entries = tl_parity.collect()
    modules = {t.split("::")[0] for e in entries for t in e.tests}
    assert modules == {m.rsplit(".", 1)[-1] for m in tl_parity.MODULES}
    for e in entries:
        assert e.tests and e.note and e.status in ("works", "differs", "n/a")
        for t in e.tests:  # each named test exists in its module
            module, name = t.split("::")
            assert hasattr(sys.modules[f"tests.model.{module}"], name), t


def test_splice_replaces_only_between_the_markers():
    page = f"intro\n{tl_parity.BEGIN}\nold claims\n{tl_parity.END}\noutro\n"
    out = tl_parity.splice_table(page)
    assert out.startswith(f"intro\n{tl_parity.BEGIN}\n| TransformerLens API |")
    assert out.endswith(f"{tl_parity.END}\noutro\n") and "old claims" not in out
    assert tl_parity.splice_table(out) == out
    with pytest.raises(ValueError, match="must hold"):
        tl_parity.splice_table("no markers")


def test_the_script_check_mode_agrees(tmp_path):
    script = ROOT / "docs" / "scripts" / "tl_parity_table.py"
    done = subprocess.run([sys.executable, str(script), "--check"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
