"""One concept per module: no module of the package is over 400 lines (the project's standard;
issue 25's acceptance). A module that outgrows it is split by concept, not trimmed."""

from __future__ import annotations

from pathlib import Path

import lvlm_lens

MAX_LINES = 400


def long_modules(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Modules under ``root`` over ``limit`` lines, with their line counts."""
    sizes = {p.relative_to(root.parent).as_posix(): len(p.read_text().splitlines())
             for p in sorted(root.rglob("*.py"))}  # fmt: skip
    return {name: n for name, n in sizes.items() if n > limit}


def test_no_module_is_over_400_lines():
    assert long_modules(Path(lvlm_lens.__file__).parent) == {}


def test_a_long_module_is_named(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "short.py").write_text("x = 1\n" * 400)
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * 401)
    assert long_modules(tmp_path / "pkg") == {"pkg/long.py": 401}
