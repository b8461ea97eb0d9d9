"""The picture of the run's pipeline in ``docs/design.md`` names what the code has: every
type, function and method it names exists, a dataclass's listed fields are its fields in order,
and a call's named arguments are the callable's parameters (issue 25: the picture matches the
code)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.run.outcome import AttributionRun, RunOutcome

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("run", "attribution", "interventions", "viz", "model")
ALIASES = {"engine": AblationEngine, "run": AttributionRun, "outcome": RunOutcome}
FILES = ("json", "html", "safetensors")


def pipeline_block(text: str) -> str:
    """The ``text`` block under the design doc's pipeline heading."""
    section = text[text.index("## The run: one typed pipeline"):]
    body = section[section.index("```text\n") + 8 :]
    return body[: body.index("```")]


def namespace() -> dict[str, object]:
    """Module-level names of every module of the pipeline's packages."""
    names: dict[str, object] = {}
    for pkg in PACKAGES:
        package = importlib.import_module(f"lvlm_lens.{pkg}")
        names |= vars(package)
        for info in pkgutil.iter_modules(package.__path__, f"lvlm_lens.{pkg}."):
            if info.name.endswith("__main__"):
                continue
            names |= {k: v for k, v in vars(importlib.import_module(info.name)).items()
                      if not k.startswith("_")}  # fmt: skip
    return names


def resolve(prefix: str, names: dict[str, object]) -> object:
    """A qualified name's owner: a module (``viz.report``, ``run/examples``, or one of the
    pipeline's packages' modules by its own name: ``job``), a type or a variable of a known
    type."""
    if prefix in ALIASES:
        return ALIASES[prefix]
    if prefix in names and inspect.isclass(names[prefix]):
        return names[prefix]
    dotted = prefix.replace("/", ".")
    for module in (f"lvlm_lens.{dotted}", *(f"lvlm_lens.{pkg}.{dotted}" for pkg in PACKAGES)):
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError:
            continue
    raise AssertionError(f"design.md's pipeline names {prefix!r}, which is no module or type")


def has(owner: object, name: str) -> bool:
    if dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}:
        return True
    return hasattr(owner, name)


def check_block(block: str) -> list[str]:
    """What the block names that the code lacks (empty: it matches)."""
    names, wrong = namespace(), []
    for prefix, name in re.findall(r"\b([\w/]+(?:\.\w+)*)\.(\w+)\b", block):
        if name in FILES:
            continue
        if not has(resolve(prefix, names), name):
            wrong.append(f"{prefix}.{name}")
    for word in re.findall(r"(?<![\w./])([A-Z]\w*[a-z]\w*|[a-z]+_\w+)\b(?![./\w])", block):
        if word not in names:
            wrong.append(word)
    for callee, args in re.findall(r"([\w.]+)\(([^()]*)\)", block):
        head, _, last = callee.rpartition(".")
        fn = getattr(resolve(head, names), last, None) if head else names.get(last)
        given = [a.strip() for a in args.split(",") if a.strip()]
        if dataclasses.is_dataclass(fn):
            if given != [f.name for f in dataclasses.fields(fn)][: len(given)]:
                wrong.append(f"{callee}({args}): fields are "
                             f"{[f.name for f in dataclasses.fields(fn)]}")  # fmt: skip
        elif callable(fn) and not inspect.isclass(fn):
            params = inspect.signature(fn).parameters
            wrong += [f"{callee}({a})" for a in given
                      if re.fullmatch(r"[a-z_]\w*", a) and a not in params]  # fmt: skip
    return wrong


def test_the_pipeline_picture_names_what_the_code_has():
    block = pipeline_block((ROOT / "docs" / "design.md").read_text())
    assert "AttributedExample" in block and "RunOutcome(" in block
    assert check_block(block) == []


@pytest.mark.parametrize(
    "stale",
    [
        "AttributionRun(out, result, infos, kept, metrics)",  # the fields before issue 25
        "job.compare(run.attributed) ─> check_baseline(inputs, bases, engines)",
        "runner.merge_all ─> fit_result",
        "store.load_report_inputs(out)",  # it lives in report_files
        "RunOutcomes",
    ],
)
def test_a_stale_picture_is_caught(stale):
    assert check_block(stale), f"{stale!r} passed"
