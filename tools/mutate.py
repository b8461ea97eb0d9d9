"""``make mutate``: mutmut 3 over the whole package (``[tool.mutmut]``), not in CI.

Runs ``mutmut run`` (configuration: ``[tool.mutmut]`` in pyproject.toml) with one worker and one
thread, for the mutant name patterns given (default: every layer in LAYERS), then prints the
score per module and per layer. mutmut 3 skips decorated functions; here functions decorated
only with ``@torch.no_grad()`` are mutated too (the decorator has no side effect at definition
time, and the engine's hot paths carry it), by relaxing that one rule before mutants are made.

Usage:
    python -m tools.mutate [PATTERN ...]     e.g. "lvlm_lens.interventions.*"
    python -m tools.mutate --report          scores of the last run, survivors to review
    python -m tools.mutate --survivors       every survivor's diff and its equivalence rule
    python -m tools.mutate --sample N [--seed S] [--per-layer | PREFIX]
                                             N mutants drawn at random (seeded) among those
                                             whose name starts with PREFIX (e.g.
                                             lvlm_lens.model), or, with --per-layer, from every
                                             layer in proportion to its mutants (at least
                                             MIN_PER_LAYER each); the mutants are generated
                                             first when there are none
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from difflib import SequenceMatcher
from pathlib import Path

from tools.mutate_reviewed import REVIEWED

# Every mutated layer (pyproject.toml's only_mutate); the top-level modules form one layer.
LAYERS = tuple(f"lvlm_lens.{name}.*" for name in (
    "analysis", "attribution", "data", "interventions", "model", "run", "toy", "viz",
    "errors", "files", "progress"))  # fmt: skip
TOP_LEVEL = ("lvlm_lens.errors", "lvlm_lens.files", "lvlm_lens.progress")
MIN_PER_LAYER = 10


def layer_of(module: str) -> str:
    """``lvlm_lens.<subpackage>``, or ``lvlm_lens (top-level modules)``."""
    layer = ".".join(module.split(".")[:2])
    return "lvlm_lens (top level)" if layer in TOP_LEVEL else layer


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


def _fields(line: str) -> str:
    """A line with the literal text of its strings dropped and their ``{...}`` fields kept: a
    change inside a field (``{tuple(None)}`` raises TypeError, ``{x[1]}`` prints another value)
    is not a change of wording."""
    return _STRING.sub(lambda m: '"' + "".join(re.findall(r"\{[^}]*\}", m.group())) + '"', line)


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
        _fields(o) == _fields(n) or re.search(r"(?:Error|Exception|Warning)\(None\)", n))),
}  # fmt: skip


# Survivors read one by one and found equivalent (or unobservable) that no general rule covers:
# (end of the mangled function name, text of a removed line, text of an added line, verdict,
# why). Matched on the change, not on the mutant's number (which shifts when the function is
# edited); docs/testing.md explains each.


def _verdict(rule: str) -> str:
    return RULES[rule][0] if rule in RULES else rule.split(":")[0]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return math.nan, math.nan
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return mid - half, mid + half


def classify(diff: str, name: str = "") -> str | None:
    """The rule a survivor's change matches: a reviewed survivor of its function (REVIEWED),
    else a general rule (RULES); None: needs a look."""
    function = name.split("__mutmut_")[0]
    rows = diff.splitlines()[2:]
    gone, came = ([r[1:].strip() for r in rows if r[:1] == sign] for sign in "-+")
    for where, old, new, verdict, why in REVIEWED:
        if function.endswith(where) and any(old in r for r in gone) and any(new in r for r in came):
            return f"{verdict}: {why}"
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


def stratified(strata: list[tuple[int, int, int]], z: float = 1.96) -> tuple[float, float, float]:
    """Whole-population proportion from per-layer samples ``(killed, run, size)``: the layers'
    proportions weighted by their sizes, with a Wilson interval at the Kish effective sample
    size (the size at which a simple random sample would have the same variance)."""
    strata = [(k, n, size) for k, n, size in strata if n]
    total = sum(size for *_, size in strata)
    if not total:
        return math.nan, math.nan, math.nan
    p = sum(size / total * k / n for k, n, size in strata)
    var = sum((size / total) ** 2 * (k / n) * (1 - k / n) / n for k, n, size in strata)
    n_eff = p * (1 - p) / var if var else sum(n for _, n, _ in strata)
    lo, hi = wilson(round(p * n_eff), round(n_eff), z) if n_eff >= 1 else (math.nan, math.nan)
    return p, lo, hi


def report(show: bool = False) -> int:
    """Scores per module and layer from ``mutants/**/*.meta``. Detected = killed, timed out or
    crashed; survivors split into equivalent / unobservable (see RULES) and the rest
    ("survived"); "no tests" = no selected test runs the function (counted as not killed)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    detected = {"killed", "timeout", "segfault"}
    cols = ("detected", "survived", "unobservable", "equivalent", "no tests")
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
                rule = classify(diff, name)
                survivors.append((name, diff, rule))
                status = _verdict(rule) if rule else "survived"
            per_module[module]["detected" if status in detected else status] += 1

    def ran(c: Counter) -> int:
        return sum(c[k] for k in cols)

    def line(name: str, c: Counter) -> str:
        non_equivalent = ran(c) - c["equivalent"]
        pct = lambda n: f"{c['detected'] / n:.0%}" if n else "-"  # noqa: E731
        return (f"{name:40s} {c['detected']:8d} {c['survived']:8d} {c['unobservable']:6d} "
                f"{c['equivalent']:6d} {c['no tests']:6d} {sum(c.values()) - ran(c):8d} "
                f"{pct(non_equivalent):>7s} {pct(ran(c)):>7s}")

    print(f"{'module':40s} {'detected':>8s} {'survived':>8s} {'unobs.':>6s} {'equiv.':>6s} "
          f"{'no test':>6s} {'not run':>8s} {'non-eq.':>7s} {'all':>7s}")  # fmt: skip
    total: Counter = Counter()
    for module, c in sorted(per_module.items()):
        total += c
        if ran(c):
            print(line(module, c))
    layers: dict[str, Counter] = defaultdict(Counter)
    for module, c in per_module.items():
        layers[layer_of(module)] += c
    for layer, c in sorted(layers.items()):
        print(line(layer, c))
    print(line("total", total))
    print("not run:", {k: v for k, v in total.items() if k not in cols})
    print("score non-eq. = detected / (all - equivalent); all = detected / all mutants run "
          "(unobservable and no-test mutants count as not detected)")
    strata = []
    for layer, c in sorted(layers.items()):
        n = ran(c) - c["equivalent"]
        if n and sum(c.values()) > ran(c):  # a sample: give its uncertainty
            # the layer's size without its equivalent mutants, estimated at the sampled rate
            size = round(sum(c.values()) * n / ran(c))
            strata.append((c["detected"], n, size))
            lo, hi = wilson(c["detected"], n)
            print(f"{layer}: {n} of {sum(c.values()) - c['equivalent']} mutants run, non-eq. "
                  f"{c['detected'] / n:.0%} (95 % Wilson interval {lo:.0%}-{hi:.0%})")
    if len(strata) > 1:
        p, lo, hi = stratified(strata)
        print(f"whole package (layers weighted by size): non-eq. {p:.1%} "
              f"(95 % interval {lo:.0%}-{hi:.0%})")
    for name, n in Counter(rule for *_, rule in survivors if rule).most_common():
        print(f"  {n:4d}  {_verdict(name)}: {name.split(': ', 1)[-1]}")
    print("survivors to review:" if not show else "")
    for name, diff, rule in survivors:
        if show:
            print(f"\n== {name}: {rule or 'REVIEW'}")
            print("\n".join(row for row in diff.splitlines()[2:] if row[:1] in "+-"))
        elif rule is None:
            print("  ", name)
    return 0


def _mutant_names() -> list[str]:
    return sorted(name for meta in Path("mutants").rglob("*.py.meta")
                  for name in json.loads(meta.read_text())["exit_code_by_key"])  # fmt: skip


def generate() -> None:
    """Make every mutant (as ``mutmut run`` does first) without running any."""
    from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants
    from mutmut.mutation.trampoline import set_mutant_under_test
    from mutmut.utils.file_utils import setup_source_paths

    set_mutant_under_test("mutant_generation")
    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    create_mutants(1)


def sample(n: int, prefix: str | None, seed: int = 0) -> list[str]:
    """``n`` mutant names drawn (seeded) among the generated mutants starting with ``prefix``;
    ``prefix=None``: from every layer, ``n`` split in proportion to the layers' mutant counts
    (largest remainders; at least MIN_PER_LAYER from each, or all of a smaller layer)."""
    if not list(Path("mutants").rglob("*.py.meta")):
        generate()
    names = _mutant_names()
    if prefix is not None:
        names = [name for name in names if name.startswith(prefix)]
        if len(names) < n:
            raise SystemExit(f"{len(names)} generated mutants start with {prefix!r} (need {n})")
        return sorted(random.Random(seed).sample(names, n))
    by_layer: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_layer[layer_of(name)].append(name)
    floor = {layer: min(MIN_PER_LAYER, len(m)) for layer, m in by_layer.items()}
    rest = n - sum(floor.values())
    if rest < 0:
        raise SystemExit(f"--sample {n} --per-layer: need at least {sum(floor.values())} "
                         f"({MIN_PER_LAYER} from each of {len(by_layer)} layers)")
    spare = {layer: len(m) - floor[layer] for layer, m in by_layer.items()}
    quota = {layer: rest * spare[layer] / sum(spare.values()) for layer in by_layer}
    take = {layer: floor[layer] + math.floor(quota[layer]) for layer in by_layer}
    by_remainder = sorted(by_layer, key=lambda x: math.floor(quota[x]) - quota[x])
    for layer in by_remainder[: n - sum(take.values())]:
        take[layer] += 1
    rng = random.Random(seed)
    picked = [m for layer in sorted(by_layer) for m in rng.sample(by_layer[layer], take[layer])]
    for layer in sorted(by_layer):
        print(f"sample: {take[layer]:4d} of {len(by_layer[layer]):5d} mutants of {layer}")
    return sorted(picked)


def main(argv: list[str]) -> int:
    if argv[:1] in (["--report"], ["--survivors"]):
        return report(show=argv[0] == "--survivors")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _allow_no_grad()
    from mutmut.__main__ import cli

    if argv[:1] == ["--sample"]:
        rest = argv[2:]
        seed = int(rest[rest.index("--seed") + 1]) if "--seed" in rest else 0
        prefix = None if "--per-layer" in rest else rest[-1]
        if prefix is None and len(rest) not in (1, 3) or prefix is not None and prefix[:2] == "--":
            raise SystemExit("--sample N [--seed S] (--per-layer | PREFIX)")
        argv = sample(int(argv[1]), prefix, seed)
    patterns = argv or list(LAYERS)
    try:
        cli(["run", "--max-children", "1", *patterns], standalone_mode=False)
    finally:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
