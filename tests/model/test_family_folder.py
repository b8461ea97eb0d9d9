"""One folder per family: what differs between families lives in ``lvlm_lens/model/families/``.

The scan reads every module under ``lvlm_lens/`` outside ``model/families/`` (one module per
family) and ``testing/`` (its tiny builders are per family by nature: one config per kind) and
refuses a branch on a family or text type by name: a comparison (``==``, ``!=``, ``in``,
``not in``) of ``model_type`` / ``lvlm_type`` against a string literal that is a supported
family or language backbone. Such a branch belongs in a family's module, as a declarative
property of its :class:`Family`, its vision side or its builders.
"""

from __future__ import annotations

import ast
import json
import pkgutil
from pathlib import Path

import pytest

from lvlm_lens.model import families
from lvlm_lens.model.families import FAMILIES, MODULES, SUPPORTED_TEXT_MODELS
from lvlm_lens.testing import TINY_KINDS

ROOT = Path(__file__).resolve().parents[2] / "lvlm_lens"
PER_FAMILY = (ROOT / "model" / "families", ROOT / "testing")
NAMES = set(FAMILIES) | set(SUPPORTED_TEXT_MODELS)
TYPE_FIELDS = {"model_type", "lvlm_type"}
OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def _is_type_field(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr in TYPE_FIELDS) or (
        isinstance(node, ast.Name) and node.id in TYPE_FIELDS
    )


def _family_literals(node: ast.AST) -> list[str]:
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [
        n.value for n in items
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in NAMES
    ]  # fmt: skip


def family_branches(source: str) -> list[tuple[int, str]]:
    """``(line, literal)`` of every comparison of a type field against a family / text type."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare) or not all(isinstance(o, OPS) for o in node.ops):
            continue
        operands = [node.left, *node.comparators]
        if any(_is_type_field(o) for o in operands):
            found += [(node.lineno, s) for o in operands for s in _family_literals(o)]
    return found


def _scanned() -> list[Path]:
    return sorted(
        p for p in ROOT.rglob("*.py") if not any(p.is_relative_to(d) for d in PER_FAMILY)
    )


def test_the_scan_finds_each_kind_of_family_branch():
    src = (
        "if cfg.lvlm_type == 'llava': pass\n"
        "x = model_type != 'gemma3'\n"
        "y = inp.lvlm_type in ('', 'qwen2_vl')\n"
        "z = tc.model_type not in ['mistral']\n"
        "ok = cfg.lvlm_type == 'other' or kind == 'llava' or FAMILIES[cfg.lvlm_type]\n"
    )
    assert family_branches(src) == [(1, "llava"), (2, "gemma3"), (3, "qwen2_vl"), (4, "mistral")]


def test_no_module_outside_the_family_folder_branches_on_a_family_name():
    assert len(_scanned()) > 50  # the scan sees the package
    offenders = [
        f"{p.relative_to(ROOT.parent)}:{line}: {literal!r}"
        for p in _scanned()
        for line, literal in family_branches(p.read_text())
    ]
    assert offenders == [], "family branches outside lvlm_lens/model/families/:\n" + "\n".join(
        offenders
    )


def test_the_registry_lists_exactly_the_family_modules_of_the_folder():
    in_folder = {m.name for m in pkgutil.iter_modules(families.__path__)} - {"base"}
    assert sorted(m.__name__.rsplit(".", 1)[-1] for m in MODULES) == sorted(in_folder)
    entries = [(t, f) for m in MODULES for t, f in m.BY_MODEL_TYPE.items()]
    assert len(entries) == len(FAMILIES) == 21
    assert all(FAMILIES[t] is f for t, f in entries)


def test_every_tiny_kind_belongs_to_exactly_one_family():
    kinds = [k for f in FAMILIES.values() for k in f.tiny_kinds]
    assert sorted(kinds) == sorted(TINY_KINDS)
    assert all(f.tiny_kinds for f in FAMILIES.values())


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_a_familys_tiny_checkpoints_are_of_that_family(tiny_checkpoint, model_type):
    for kind in FAMILIES[model_type].tiny_kinds:
        config = json.loads((tiny_checkpoint(kind) / "config.json").read_text())
        assert config["model_type"] == model_type
        assert config["text_config"]["model_type"] in FAMILIES[model_type].text_types
