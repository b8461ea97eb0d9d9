"""Write the TransformerLens parity table of ``docs/guides/transformerlens.md`` from the tests.

    python docs/scripts/tl_parity_table.py           # rewrite the table between its markers
    python docs/scripts/tl_parity_table.py --check   # exit 1 if the committed table is stale

Each row is declared by the test that checks it (``@parity(...)`` in ``tests/model/``, see
``tests/model/tl_parity.py``); ``tests/model/test_tl_parity_table.py`` fails when the page's
table is not the one this script writes, so the guide claims nothing no test checks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "transformerlens.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.model.tl_parity import splice_table

    text = GUIDE.read_text(encoding="utf-8")
    new = splice_table(text)
    if args.check:
        if new != text:
            print(f"{GUIDE.relative_to(ROOT)}: the parity table is stale; run "
                  "python docs/scripts/tl_parity_table.py", file=sys.stderr)
            return 1
        return 0
    GUIDE.write_text(new, encoding="utf-8")
    print(f"wrote the parity table of {GUIDE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
