"""The API reference pages of the docs site, generated from the packages' ``__all__``.

``docs/hooks.py`` writes these pages at every ``mkdocs build``; ``tests/test_docs_api.py`` checks
that every public name is on one and has a docstring. What is public:

- ``quantizers.__all__`` and ``qlayers.__all__``, one page each, grouped by the module that defines
  each name;
- every public subpackage of ``qlayers`` (a folder with an ``__init__.py``, such as ``qlayers.model``,
  ``qlayers.compat``, ``qlayers.ptq``) and every module or subpackage a page's ``__all__`` names
  (``qlayers.compat.amct``), each a page of its own with its module docstring and the names of its
  ``__all__`` not already documented on an earlier page;
- every module ``qlayers/<name>.py`` whose ``__all__`` holds a name documented nowhere else.

So a new subpackage or exported name appears without editing anything here. Each object is rendered
once, at the path of the module that defines it (what mkdocstrings' static loader, griffe, can find
without following ``from x import *`` chains); a name another package re-exports links there.
"""
from __future__ import annotations

import ast
import importlib
import re
import inspect
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("quantizers", "qlayers")
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const|ref):`(~?)([^`]+)`")


def strip_roles(text: str) -> str:
    """``text`` with every Sphinx role (``:class:`a.B```, ``:func:`~a.f```) replaced by a code span of
    its target (``~`` keeps the last component, as Sphinx shows it)."""
    return _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


def summary(module_name: str) -> str:
    """The first paragraph of a module's docstring, roles stripped, on one line ("" if none)."""
    doc = inspect.getdoc(importlib.import_module(module_name)) or ""
    return strip_roles(" ".join(doc.split("\n\n")[0].split()))


@dataclass
class Entry:
    """One public name: ``public`` (``quantizers.get_format``) documented at ``path``, the dotted path
    of its definition (``quantizers.formats.registry.get_format``)."""

    public: str
    path: str
    is_module: bool = False


@dataclass
class Page:
    """One generated page: ``module`` documented with ``entries`` grouped by defining module."""

    module: str
    entries: List[Entry] = field(default_factory=list)
    links: List[Entry] = field(default_factory=list)  # re-exports documented on another page
    submodules: List[str] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return f"api/{self.module}.md"


def _assigned_at_top(module: ModuleType, name: str) -> bool:
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return False
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def defining_path(module: ModuleType, name: str) -> Tuple[str, bool]:
    """Dotted path of the definition of ``module.name`` and whether it is a module."""
    obj = getattr(module, name)
    if inspect.ismodule(obj):
        return obj.__name__, True
    owner = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if (inspect.isclass(obj) or inspect.isfunction(obj)) and owner and qualname and "<" not in qualname:
        return f"{owner}.{qualname}", False
    # A constant: the module (this one or a submodule, already imported) that assigns it.
    candidates = [m for n, m in sorted(sys.modules.items()) if m is not None
                  and (n == module.__name__ or n.startswith(module.__name__.split(".")[0] + "."))
                  and getattr(m, name, None) is obj and _assigned_at_top(m, name)]
    return (f"{candidates[0].__name__}.{name}" if candidates else f"{module.__name__}.{name}"), False


def _public_subpackages(package: ModuleType) -> List[str]:
    folder = Path(package.__file__).parent
    return sorted(f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules([str(folder)])
                  if not info.name.startswith("_") and info.ispkg)


def _public_modules(package: ModuleType) -> List[str]:
    folder = Path(package.__file__).parent
    return sorted(f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules([str(folder)])
                  if not info.name.startswith("_") and not info.ispkg and info.name != "__main__")


def _static_all(module_name: str) -> Optional[List[str]]:
    """A module's literal ``__all__`` read from its source without importing it (None if absent)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            try:
                return list(ast.literal_eval(node.value))
            except ValueError:
                return []
    return None


def api_pages() -> List[Page]:
    """Every generated API page, in navigation order (see the module docstring)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    pages: List[Page] = []
    documented: Dict[str, str] = {}  # definition path -> page module
    queue: List[str] = list(PACKAGES)
    for top in PACKAGES:
        queue += [m for m in _public_subpackages(importlib.import_module(top)) if top == "qlayers"]
    seen = set()
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        module = importlib.import_module(name)
        page = Page(name)
        for public in getattr(module, "__all__", []):
            path, is_module = defining_path(module, public)
            entry = Entry(f"{name}.{public}", path, is_module)
            if is_module:
                page.submodules.append(path)
                queue.append(path)
            elif path in documented:
                page.links.append(entry)
            else:
                documented[path] = name
                page.entries.append(entry)
        if name.count(".") == 1 and hasattr(module, "__path__") and not hasattr(module, "__all__"):
            queue += _public_subpackages(module)
        pages.append(page)
    # Plain qlayers modules whose __all__ holds something documented nowhere else.
    for name in _public_modules(importlib.import_module("qlayers")):
        names = _static_all(name)
        if not names or name in seen:
            continue
        module = importlib.import_module(name)
        page = Page(name)
        for public in names:
            path, is_module = defining_path(module, public)
            if not is_module and path not in documented:
                documented[path] = name
                page.entries.append(Entry(f"{name}.{public}", path))
        if page.entries:
            pages.append(page)
    return pages


def page_markdown(page: Page, pages: List[Page]) -> str:
    """The Markdown of one API page: mkdocstrings ``:::`` blocks grouped by defining module."""
    # A module without __all__ (qlayers.compat.amct) shows its own public functions and classes.
    members = "false" if page.entries or page.links or page.submodules else "true"
    lines = [f"# `{page.module}`", "", f"::: {page.module}", "    options:", f"      members: {members}",
             "      show_root_heading: false", "      show_root_toc_entry: false", "      heading_level: 2", ""]
    if page.submodules:
        lines += ["Modules documented on their own pages: " + ", ".join(
            f"[`{m}`]({m}.md)" for m in page.submodules if any(p.module == m for p in pages)) + ".", ""]
    groups: Dict[str, List[Entry]] = {}
    for entry in page.entries:
        groups.setdefault(_owner(entry.path), []).append(entry)
    for owner, entries in groups.items():
        if len(groups) > 1 or owner != page.module:
            lines += [f"## `{owner}`", ""] + ([summary(owner), ""] if summary(owner) else [])
        for entry in entries:
            lines += [f"::: {entry.path}", "    options:", "      heading_level: 3",
                      f'      toc_label: "{entry.public.rsplit(".", 1)[-1]}"', ""]
    if page.links:
        lines += ["## Re-exported here", "", "| name | documented as |", "| --- | --- |"]
        lines += [f"| `{e.public}` | [`{e.path}`][{e.path}] |" for e in page.links]
        lines.append("")
    return "\n".join(lines)


def _owner(path: str) -> str:
    """The module of a definition path (``a.b.Class.method`` -> ``a.b``)."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:cut]) in sys.modules:
            return ".".join(parts[:cut])
    return parts[0]
