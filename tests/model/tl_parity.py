"""The TransformerLens parity registry: each TL API's status on HookedLVLM, declared by the
tests that check it.

A test says what it shows with ``@parity(api, status, note)``; an API that does not apply is
declared with :func:`not_applicable` next to the test of the error it raises.
``docs/scripts/tl_parity_table.py`` renders the registry as the table of
``docs/guides/transformerlens.md`` (between :data:`BEGIN` and :data:`END`), and
``tests/model/test_tl_parity_table.py`` checks that the committed table is the rendered one,
so the guide claims nothing that no test checks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["works", "differs", "n/a"]

#: The test modules that declare parity entries, in the table's order.
MODULES = (
    "tests.model.test_tl_tokens",
    "tests.model.test_tl_cache",
    "tests.model.test_activation_cache",
    "tests.model.test_tl_switches",
    "tests.model.test_tl_forward",
    "tests.model.test_tl_generate",
    "tests.model.test_tl_analysis",
    "tests.model.test_tl_linear_layers",
)


@dataclass
class Entry:
    """One TL API: its status, how it differs or why it does not apply, and its tests."""

    api: str
    status: Status
    note: str
    tests: list[str] = field(default_factory=list)


REGISTRY: dict[str, Entry] = {}


def _register(api: str, status: Status, note: str, test: str) -> None:
    if status not in ("works", "differs", "n/a"):
        raise ValueError(f"status must be 'works', 'differs' or 'n/a', got {status!r}")
    entry = REGISTRY.setdefault(api, Entry(api, status, note))
    if (entry.status, entry.note) != (status, note):
        raise ValueError(f"{api!r} is declared twice with different claims")
    if test not in entry.tests:
        entry.tests.append(test)


def parity(api: str, status: Status, note: str) -> Callable:
    """Declare that the decorated test checks ``api``'s ``status`` (``note``: how / what)."""

    def mark(test: Callable) -> Callable:
        module = test.__module__.rsplit(".", 1)[-1]
        _register(api, status, note, f"{module}::{test.__name__}")
        return test

    return mark


def not_applicable(api: str, why: str, test: str) -> None:
    """Declare that ``api`` does not apply (``why``); ``test`` checks the refusal."""
    _register(api, "n/a", why, test)


def collect() -> list[Entry]:
    """Every declared entry, importing the declaring test modules; in :data:`MODULES`' order,
    then each module's declaration order (whichever module pytest happened to import first)."""
    for name in MODULES:
        importlib.import_module(name)
    rank = {m.rsplit(".", 1)[-1]: i for i, m in enumerate(MODULES)}
    return sorted(REGISTRY.values(), key=lambda e: rank.get(e.tests[0].split("::")[0], len(rank)))


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: no column bar, no raw HTML (``<img row,col>``)."""
    return text.replace("|", "/").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_table() -> str:
    """The parity table as Markdown."""
    rows = ["| TransformerLens API | Status | How / why | Tested by |", "|---|---|---|---|"]
    for e in collect():
        tests = "<br>".join(f"`{t}`" for t in e.tests)
        rows.append(f"| `{e.api}` | {e.status} | {_cell(e.note)} | {tests} |")
    return "\n".join(rows) + "\n"


#: The markers between which the guide holds the rendered table.
BEGIN, END = "<!-- tl-parity-table:begin -->", "<!-- tl-parity-table:end -->"


def splice_table(page: str) -> str:
    """``page`` with the text between :data:`BEGIN` and :data:`END` replaced by the table."""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise ValueError(f"the page must hold {BEGIN} once, then {END} once")
    head, rest = page.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{render_table()}{END}{tail}"
