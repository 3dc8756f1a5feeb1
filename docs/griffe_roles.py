"""Griffe extension of the docs site: Sphinx cross-reference roles in docstrings render as code.

The docstrings use reStructuredText roles (``:class:`quantizers.BiasQuantizer```, ``:func:`~x.f```)
that Markdown would show verbatim; this turns each into a code span of the name (``~`` keeps only
the last component, as Sphinx does). Loaded by mkdocstrings (``extensions`` in ``mkdocs.yml``).
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const|ref):`(~?)([^`]+)`")


def _replace(match: re.Match) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


def strip_roles(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span of its target."""
    return ROLE.sub(_replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrites each object's docstring once, when griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
