"""Every public name has a docstring, and every public subpackage has an API reference page.

Public names: ``lvlm_lens.__all__`` and each subpackage's ``__all__`` (a subpackage without
``__all__``: the names it defines without a leading underscore), then the public methods,
properties and attributes of each public class, those it inherits from the package's own
classes (mixins) included. The package is read with griffe through the
site's own extension (``docs/scripts/griffe_docstrings.py``), so what passes here is what the
API reference shows: mkdocstrings leaves out an object without a docstring.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _extension_module():
    spec = importlib.util.spec_from_file_location(
        "griffe_docstrings", DOCS / "scripts" / "griffe_docstrings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXT = _extension_module()


@pytest.fixture(scope="module")
def package():
    return griffe.load(
        "lvlm_lens",
        search_paths=[str(ROOT)],
        extensions=griffe.load_extensions(EXT.SphinxDocstrings),
        docstring_parser="google",
        resolve_aliases=True,
        resolve_external=False,
    )


def _target(obj):
    return obj.final_target if obj.is_alias else obj


def public_names(module) -> list[str]:
    """``__all__``, or the module's own non-underscore objects (not submodules, not imports)."""
    if module.exports is not None:
        return EXT.exported(module)
    return [
        name
        for name, m in module.members.items()
        if not name.startswith("_") and not m.is_alias and not m.is_module
    ]


def attribute_section_names(cls) -> set[str]:
    """Names listed in the class docstring's ``Attributes:`` section (``a, b:`` lists two)."""
    names: set[str] = set()
    if cls.docstring is None:
        return names
    for section in cls.docstring.parsed:
        if section.kind.value == "attributes":
            for item in section.value:
                names.update(n.strip() for n in item.name.split(","))
    return names


def undocumented(obj, where: str) -> list[str]:
    """Public objects without a docstring, as ``where: path`` lines."""
    obj = _target(obj)
    if not (obj.docstring and obj.docstring.value.strip()):
        return [f"{where}: {obj.path}"]
    missing = []
    if obj.is_class:
        listed = attribute_section_names(obj)
        own = {n: m for n, m in obj.members.items() if not m.is_alias}
        inherited = {n: m.final_target for n, m in obj.inherited_members.items()}
        for name, member in (inherited | own).items():  # mixins of the package included
            if name.startswith("_") or not member.path.startswith("lvlm_lens."):
                continue
            documented = bool(member.docstring and member.docstring.value.strip())
            if member.is_attribute and "property" not in member.labels:
                documented = documented or name in listed
            if not documented:
                missing.append(f"{where}: {member.path}")
    return missing


def test_every_public_name_has_a_docstring(package):
    modules = {"lvlm_lens": package} | {m: package[m.removeprefix("lvlm_lens.")]
                                        for m in EXT.API_MODULES}
    missing = []
    for path, module in modules.items():
        names = public_names(module)
        assert names or path == "lvlm_lens.analysis", f"{path} exports nothing"
        for name in names:
            assert name in module.members, f"{path}.__all__ names {name!r}, which it lacks"
            assert not _target(module.members[name]).is_module, f"{path}.{name} is a module"
            missing += undocumented(module.members[name], f"{path}.{name}")
    assert not missing, "public names without a docstring:\n" + "\n".join(sorted(set(missing)))


def test_top_level_names_are_on_a_reference_page(package):
    """Each name of ``lvlm_lens.__all__`` is exported by a subpackage that has a page."""
    shown = set()
    for path in EXT.API_MODULES:
        module = package[path.removeprefix("lvlm_lens.")]
        shown |= {_target(module.members[n]).path for n in public_names(module)}
    lost = [n for n in EXT.exported(package) if _target(package.members[n]).path not in shown]
    assert not lost, f"lvlm_lens exports {lost}, which no API reference page shows"


def test_every_subpackage_has_a_reference_page():
    """New subpackages join the API reference (``run`` is the CLI, documented in cli.md);
    so do top-level modules that export names (``lvlm_lens.progress``)."""
    subpackages = sorted(
        f"lvlm_lens.{p.parent.name}" for p in (ROOT / "lvlm_lens").glob("*/__init__.py")
    )
    assert set(subpackages) - {"lvlm_lens.run"} <= set(EXT.API_MODULES)
    for module in EXT.API_MODULES:
        page = DOCS / "api" / f"{module.removeprefix('lvlm_lens.')}.md"
        assert page.is_file() and f"::: {module}" in page.read_text(), f"no page for {module}"
