"""Every public name is in the API reference with a docstring that says what it computes.

Public: ``quantizers.__all__``, ``qlayers.__all__`` and the ``__all__`` of every page
``tools.docs_api`` generates (subpackages such as ``qlayers.model`` or ``qlayers.ptq`` are picked up
when they appear). The docstring is read the way the site reads it, statically with griffe (what
mkdocstrings renders), at the path of the definition. A name added later without a docstring fails
here, naming it and where it is defined.
"""
from __future__ import annotations

import importlib
import importlib.util
import re

import pytest

from tools import docs_api

griffe = pytest.importorskip("griffe")

#: A first paragraph shorter than this many words cannot say what a name computes.
MIN_WORDS = 3


@pytest.fixture(scope="module")
def pages():
    return docs_api.api_pages()


@pytest.fixture(scope="module")
def loaded():
    return {name: griffe.load(name, search_paths=[str(docs_api.ROOT)], resolve_aliases=False)
            for name in docs_api.PACKAGES}


def _griffe_object(loaded, path):
    top, _, rest = path.partition(".")
    obj = loaded[top]
    return obj[rest] if rest else obj


def test_every_name_of_the_top_level_all_is_on_a_page(pages):
    on_pages = {entry.public.rsplit(".", 1)[-1] for page in pages if page.module in docs_api.PACKAGES
                for entry in page.entries + page.links}
    on_pages |= {m.rsplit(".", 1)[-1] for page in pages for m in page.submodules}
    for package in docs_api.PACKAGES:
        missing = sorted(set(importlib.import_module(package).__all__) - on_pages)
        assert not missing, f"{package}.__all__ names missing from the API reference: {missing}"


def test_every_page_renders_each_entry_once(pages):
    seen = {}
    for page in pages:
        text = docs_api.page_markdown(page, pages)
        for entry in page.entries:
            assert f"::: {entry.path}\n" in text
            assert entry.path not in seen, f"{entry.path} on {page.module} and {seen[entry.path]}"
            seen[entry.path] = page.module
        for entry in page.links:
            assert entry.path in seen or any(entry.path == e.path for p in pages for e in p.entries), entry


def test_every_public_name_has_a_docstring_saying_what_it_computes(pages, loaded):
    problems = []
    for page in pages:
        objects = [(page.module, page.module)] + [(e.public, e.path) for e in page.entries]
        for public, path in objects:
            try:
                obj = _griffe_object(loaded, path)
            except (KeyError, griffe.AliasResolutionError) as error:
                problems.append(f"{public}: griffe cannot find {path} ({error!r})")
                continue
            docstring = obj.docstring.value.strip() if obj.docstring else ""
            first = re.split(r"\n\s*\n", docstring)[0] if docstring else ""
            if len(first.split()) < MIN_WORDS:
                problems.append(f"{public} (defined at {path}): docstring {docstring[:60]!r} does not say what it computes")
    assert not problems, (
        "Public names need a docstring (first paragraph: what it computes, with the formula and units "
        "where numeric; for a constant, a string literal right after the assignment):\n  " + "\n  ".join(problems))


def test_sphinx_roles_render_as_code_spans():
    text = "See :class:`quantizers.BiasQuantizer`, :func:`~quantizers.api.quantize` and :mod:`qlayers`."
    assert docs_api.strip_roles(text) == "See `quantizers.BiasQuantizer`, `quantize` and `qlayers`."
    spec = importlib.util.spec_from_file_location("qzoo_griffe_roles", docs_api.ROOT / "docs" / "griffe_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the extension mkdocs.yml loads
    assert issubclass(module.SphinxRoles, griffe.Extension)
