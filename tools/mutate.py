"""``make mutate``: mutmut 3 over the model, interventions and attribution layers (not in CI).

Runs ``mutmut run`` (configuration: ``[tool.mutmut]`` in pyproject.toml) with one worker and one
thread, for the mutant name patterns given (default: all three layers), then prints the score per
module. mutmut 3 skips decorated functions; here functions decorated only with
``@torch.no_grad()`` are mutated too (the decorator has no side effect at definition time, and
the engine's hot paths carry it), by relaxing that one rule before mutants are generated.

Usage:
    python -m tools.mutate [PATTERN ...]     e.g. "lvlm_lens.interventions.*"
    python -m tools.mutate --report          scores of the last run, survivors to review
    python -m tools.mutate --survivors       every survivor's diff and its equivalence rule
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from difflib import SequenceMatcher
from pathlib import Path

LAYERS = ("lvlm_lens.model.*", "lvlm_lens.interventions.*", "lvlm_lens.attribution.*")


def _allow_no_grad() -> None:
    import libcst as cst
    from mutmut.mutation import file_mutation

    visitor = file_mutation.MutationVisitor
    original = visitor._skip_node_and_children

    def no_grad(d: cst.Decorator) -> bool:
        call = d.decorator
        return (isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute)
                and call.func.attr.value == "no_grad")  # fmt: skip

    def skip(self, node):
        if isinstance(node, cst.FunctionDef) and node.decorators and all(
            no_grad(d) for d in node.decorators
        ):
            return original(self, node.with_changes(decorators=()))
        return original(self, node)

    visitor._skip_node_and_children = skip


_STRING = re.compile(r"(?:[rbf]?)\"[^\"]*\"")


def _changed(old: str, new: str) -> tuple[str, str, str]:
    """Tokens the mutation replaced (old, new) and the tokens before them on the line."""
    tok = lambda line: re.findall(r"\w+|[^\w\s]", line)  # noqa: E731
    a, b = tok(old), tok(new)
    ops = [o for o in SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if o[0] != "equal"]
    if not ops:
        return "", "", ""
    gone = " ".join(" ".join(a[i1:i2]) for _, i1, i2, _, _ in ops)
    came = " ".join(" ".join(b[j1:j2]) for _, _, _, j1, j2 in ops)
    return gone, came, " ".join(a[: ops[0][1]])


def _keyword(before: str) -> str:
    """The keyword argument (or parameter) the changed tokens belong to."""
    found = re.findall(r"(\w+) (?:=|:)(?! =)", before)
    return found[-1] if found else ""


# Survivors recognised from the changed tokens. "equivalent": the program computes the same
# thing; "unobservable": it differs, but not in anything this CPU / fp32 suite can see (device
# placement, dtype casts, progress bars, wording of error messages). Each rule's survivors were
# read (docs/testing.md); anything else is listed for review.
Rule = Callable[[str, str, str, str, str, str], bool]
PROGRESS = ("desc", "unit", "disable", "progress")
RULES: dict[str, tuple[str, Rule]] = {
    "einsum subscripts in upper case": ("equivalent", lambda o, n, g, c, b, ctx: (
        "einsum" in o and o.lower() == n.lower())),
    "zip(strict=...) on sequences of equal length": ("equivalent", lambda o, n, g, c, b, ctx: (
        "strict" in g + c or _keyword(b) == "strict")),
    "device placement (every test runs on CPU)": ("unobservable", lambda o, n, g, c, b, ctx: (
        "device" in g)),
    "dtype cast (the tests run in fp32)": ("unobservable", lambda o, n, g, c, b, ctx: (
        "dtype" in g)),
    "progress bar option or label": ("unobservable", lambda o, n, g, c, b, ctx: (
        _keyword(b) in PROGRESS or any(w in (g + c + b[-12:]).split() for w in PROGRESS))),
    "error message wording": ("unobservable", lambda o, n, g, c, b, ctx: "raise" in ctx and (
        _STRING.sub('""', o) == _STRING.sub('""', n) or c.strip() == "None")),
}  # fmt: skip


def classify(diff: str) -> str | None:
    """The rule a survivor's one-line change matches (None: needs a look)."""
    lines = diff.splitlines()[2:]  # without the ---/+++ header
    minus = [i for i, line in enumerate(lines) if line.startswith("-")]
    plus = [i for i, line in enumerate(lines) if line.startswith("+")]
    if not minus or not plus:
        return None
    old = " ".join(lines[i][1:].strip() for i in minus)
    new = " ".join(lines[i][1:].strip() for i in plus)
    ctx = " ".join(line[1:] for line in lines[max(0, minus[0] - 2) : minus[-1] + 1])
    gone, came, before = _changed(old, new)
    for name, (_, rule) in RULES.items():
        if rule(old, new, gone, came, before, ctx):
            return name
    return None


def report(show: bool = False) -> int:
    """Scores per module from ``mutants/**/*.meta``. Detected = killed, timed out or crashed;
    survivors split into equivalent / unobservable (see RULES) and the rest ("survived")."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    detected = {"killed", "timeout", "segfault"}
    cols = ("detected", "survived", "unobservable", "equivalent")
    per_module: dict[str, Counter] = defaultdict(Counter)
    survivors: list[tuple[str, str, str | None]] = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        source = str(meta.relative_to("mutants"))[: -len(".meta")]
        module = source[: -len(".py")].replace("/", ".")
        for name, code in data.get("exit_code_by_key", {}).items():
            status = status_by_exit_code[code]
            if status == "survived":
                diff = get_diff_for_mutant(name, path=source)
                rule = classify(diff)
                survivors.append((name, diff, rule))
                status = RULES[rule][0] if rule else "survived"
            per_module[module]["detected" if status in detected else status] += 1

    def line(name: str, c: Counter) -> str:
        strict = sum(c[k] for k in cols)
        non_equivalent = strict - c["equivalent"]
        rest = sum(c.values()) - strict
        pct = lambda n: f"{c['detected'] / n:.0%}" if n else "-"  # noqa: E731
        return (f"{name:40s} {c['detected']:8d} {c['survived']:8d} {c['unobservable']:6d} "
                f"{c['equivalent']:6d} {rest:8d} {pct(non_equivalent):>7s} {pct(strict):>7s}")

    print(f"{'module':40s} {'detected':>8s} {'survived':>8s} {'unobs.':>6s} {'equiv.':>6s} "
          f"{'not run':>8s} {'non-eq.':>7s} {'all':>7s}")  # fmt: skip
    total: Counter = Counter()
    for module, c in sorted(per_module.items()):
        total += c
        print(line(module, c))
    print(line("total", total))
    print("not run:", {k: v for k, v in total.items() if k not in cols})
    print("score non-eq. = detected / (all - equivalent); all = detected / all mutants run")
    for name, n in Counter(rule for *_, rule in survivors if rule).most_common():
        print(f"  {n:4d}  {RULES[name][0]}: {name}")
    print("survivors to review:" if not show else "")
    for name, diff, rule in survivors:
        if show:
            print(f"\n== {name}: {rule or 'REVIEW'}")
            print("\n".join(row for row in diff.splitlines()[2:] if row[:1] in "+-"))
        elif rule is None:
            print("  ", name)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] in (["--report"], ["--survivors"]):
        return report(show=argv[0] == "--survivors")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _allow_no_grad()
    from mutmut.__main__ import cli

    patterns = argv or list(LAYERS)
    try:
        cli(["run", "--max-children", "1", *patterns], standalone_mode=False)
    finally:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
