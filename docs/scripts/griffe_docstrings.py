"""A griffe extension that lets the API reference read the package's docstrings as written.

The package's docstrings are Google style with a few reStructuredText habits; this extension
adapts them when the site is built (the source is not changed):

- ``#: text`` comment lines just above a module or class attribute become its docstring
  (griffe reads only string literals after an assignment);
- a class attribute made by a factory (``W_Q = _per_head(...)``, a ``property`` built at
  import) gets the docstring the object has at run time, and is shown as a property;
- Sphinx roles (``:func:`~lvlm_lens.data.image_prompt```, ``:class:`LVLMInput```,
  ``:meth:`run_prefix```, ``:mod:`~.engine```...) become links to the object's entry in the API
  reference when it has one, and inline code otherwise;
- a paragraph ending in ``::`` (reST's literal-block marker) ends in ``:``;
- a name exported in ``__all__`` that is also the name of a submodule
  (``lvlm_lens.attribution.head_attribution``, the function, vs the module it comes from) is
  the exported object, as at run time, not the submodule.

``tests/test_api_docs.py`` loads the package through the same extension, so the test that every
public name is documented sees exactly what the site shows.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")
#: Modules with an API reference page; a module's ``__all__`` decides what its page shows.
API_MODULES = (
    "lvlm_lens.model",
    "lvlm_lens.interventions",
    "lvlm_lens.attribution",
    "lvlm_lens.analysis",
    "lvlm_lens.viz",
    "lvlm_lens.data",
    "lvlm_lens.toy",
    "lvlm_lens.testing",
    "lvlm_lens.progress",
    "lvlm_lens.hf_parts",
)


def _walk(obj: Any, out: dict[str, Any]) -> None:
    """Every object defined in the package, by canonical path (aliases skipped)."""
    out[obj.path] = obj
    for member in obj.members.values():
        if not member.is_alias and member.path.startswith(obj.path + "."):
            _walk(member, out)


def comment_docstring(attr: Any) -> str | None:
    """The ``#:`` comment lines right above an attribute, joined (None if there are none)."""
    lines = attr.lines_collection[attr.filepath] if attr.filepath in attr.lines_collection else None
    if not lines or not attr.lineno:
        return None
    found, i = [], attr.lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(found) or None


def exported(module: Any) -> list[str]:
    """A module's ``__all__`` (griffe keeps names or expressions)."""
    names = module.exports or []
    return [n if isinstance(n, str) else getattr(n, "name", str(n)) for n in names]


def anchors(pkg: Any, objects: dict[str, Any]) -> dict[str, str]:
    """Canonical path -> the identifier of its entry in the API reference.

    An object is on the page of the first :data:`API_MODULES` module that exports it, under
    that module's path (``lvlm_lens.model.HookedLVLM``), and so are its members.
    """
    out: dict[str, str] = {}
    for mod_path in API_MODULES:
        mod = objects.get(mod_path)
        if mod is None:
            continue
        out.setdefault(mod_path, mod_path)
        for name in exported(mod):
            member = mod.members.get(name)
            if member is None:
                continue
            target = member.target_path if member.is_alias else member.path
            if target in out:
                continue
            base = f"{mod_path}.{name}"
            for path in [p for p in objects if p == target or p.startswith(target + ".")]:
                out.setdefault(path, base + path[len(target):])
    return out


def resolve(target: str, owner: Any, objects: dict[str, Any], pkg: Any) -> str | None:
    """Canonical path of a Sphinx role's target seen from the docstring of ``owner``."""
    if target.startswith("."):  # Sphinx: any object whose path ends with the target
        hits = [p for p in objects if p.endswith(target)]
        return hits[0] if len(hits) == 1 else None
    if target in objects:
        return target
    scope = owner
    while scope is not None:  # the owner's class, module, package...
        if f"{scope.path}.{target}" in objects:
            return f"{scope.path}.{target}"
        head, _, rest = target.partition(".")
        member = scope.members.get(head) if hasattr(scope, "members") else None
        if member is not None and member.is_alias:
            path = member.target_path + (f".{rest}" if rest else "")
            if path in objects:
                return path
        scope = scope.parent
    if target.startswith("lvlm_lens."):  # a re-export: lvlm_lens.sub.Name
        mod, _, name = target.rpartition(".")
        module = objects.get(mod)
        member = module.members.get(name) if module is not None else None
        if member is not None and member.is_alias and member.target_path in objects:
            return member.target_path
    return None


def runtime_docstrings(objects: dict[str, Any]) -> None:
    """Docstrings of class attributes that are properties built at run time (factories)."""
    import importlib

    for obj in list(objects.values()):
        if not obj.is_class:
            continue
        try:
            cls = getattr(importlib.import_module(obj.module.path), obj.name)
        except (ImportError, AttributeError):
            continue
        for name, member in obj.members.items():
            if member.is_alias or not member.is_attribute or member.docstring is not None:
                continue
            value = cls.__dict__.get(name)
            if isinstance(value, property) and value.__doc__:
                member.docstring = griffe.Docstring(value.__doc__, parent=member)
                member.labels.add("property")


def unshadow(objects: dict[str, Any]) -> None:
    """Make ``pkg.name`` the object ``__all__`` exports where a submodule has the same name."""
    for path in ("lvlm_lens", *API_MODULES):
        mod = objects.get(path)
        if mod is None:
            continue
        for name in exported(mod):
            member = mod.members.get(name)
            if member is None or member.is_alias or not member.is_module:
                continue
            inner = member.members.get(name)
            if inner is not None and not inner.is_module:
                # the line that imports it, so that "source" order keeps its place
                lines = mod.lines[: next((i for i, t in enumerate(mod.lines)
                                          if t.startswith("__all__")), len(mod.lines))]
                lineno = next((i + 1 for i, t in enumerate(lines)
                               if re.search(rf"\b{name}\b", t.split(" import ")[-1])), None)
                mod.set_member(name, griffe.Alias(name, inner, lineno=lineno, parent=mod))


class SphinxDocstrings(griffe.Extension):
    """See the module docstring."""

    def on_attribute_instance(self, *, attr: Any, **kwargs: Any) -> None:
        """Read ``#:`` comments as the attribute's docstring."""
        if attr.docstring is None:
            text = comment_docstring(attr)
            if text:
                attr.docstring = griffe.Docstring(text, parent=attr)

    def on_package(self, *, pkg: Any, **kwargs: Any) -> None:
        """Rewrite Sphinx roles and ``::`` in every docstring of the package."""
        objects: dict[str, Any] = {}
        _walk(pkg, objects)
        runtime_docstrings(objects)
        unshadow(objects)
        where = anchors(pkg, objects)

        for obj in list(objects.values()):
            doc = obj.docstring
            if doc is None:
                continue

            def link(m: re.Match, obj: Any = obj) -> str:
                tilde, target = m.group(1), m.group(2)
                shown = target.lstrip(".").rsplit(".", 1)[-1] if tilde else target.lstrip(".")
                path = resolve(target, obj, objects, pkg)
                anchor = where.get(path) if path else None
                return f"[`{shown}`][{anchor}]" if anchor else f"`{shown}`"

            value = ROLE.sub(link, doc.value)
            doc.value = re.sub(r"(\S)::\n", r"\1:\n", value)
