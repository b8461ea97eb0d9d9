"""The executed notebooks that the docs site shows (``make notebooks``; docs/testing.md).

CI executes every ``notebooks/*.ipynb`` once (nbmake, ``--overwrite`` on a copy in
``build/executed/notebooks/``); ``clean`` then removes what must not reach the site (the
checkout's absolute path, object addresses, timing metadata) and fails on warnings noise (any
stderr output: fix it at its source in the notebook). The site hook (``hooks.py``) renders the
executed copy of a notebook only when its cells are exactly the stored notebook's, executed
without error (``executed_copy``).

Usage: ``python docs/scripts/nb_outputs.py clean build/executed/notebooks``
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Executed copies live in EXECUTED / "notebooks" (NB_EXECUTED_ROOT: another folder, for tests).
EXECUTED = Path(os.environ.get("NB_EXECUTED_ROOT") or ROOT / "build" / "executed")
ADDRESS = re.compile(r" at 0x[0-9a-f]{6,}>")


def _text(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else value


def _scrub(text: str) -> str:
    text = text.replace(f"{ROOT}/", "").replace(str(ROOT), ".")
    return ADDRESS.sub(">", text)


def clean(path: Path) -> list[str]:
    """Scrub one executed notebook in place; return its problems (stderr outputs)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    for i, cell in enumerate(nb["cells"]):
        cell.get("metadata", {}).pop("execution", None)  # nbclient's per-cell timestamps
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                if out.get("name") == "stderr":
                    text = _text(out["text"])[:200]
                    problems.append(f"{path.name} cell {i}: stderr output {text!r}")
                out["text"] = _scrub(_text(out["text"]))
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in out.get("data", {}):
                    out["data"][mime] = _scrub(_text(out["data"][mime]))
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return problems


def executed_copy(stored: Path) -> tuple[Path | None, str]:
    """The executed copy of a stored notebook if it is current, else ``None`` and why not."""
    copy = EXECUTED / "notebooks" / stored.name
    if not copy.is_file():
        return None, "not executed"
    cells = [json.loads(p.read_text(encoding="utf-8"))["cells"] for p in (stored, copy)]
    if [_text(c["source"]) for c in cells[0]] != [_text(c["source"]) for c in cells[1]]:
        return None, "its executed copy is stale (the stored cells changed)"
    for cell in cells[1]:
        if cell["cell_type"] != "code":
            continue
        if cell.get("execution_count") is None and _text(cell["source"]).strip():
            return None, "its executed copy did not run to the end"
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return None, "its executed copy has an error"
    return copy, ""


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "clean":
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    problems = [p for path in sorted(Path(argv[1]).glob("*.ipynb")) for p in clean(path)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
