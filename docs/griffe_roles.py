"""Griffe extension of the docs site: Sphinx cross-reference roles in docstrings render as code.

The docstrings use reStructuredText roles (``:class:`quantizers.BiasQuantizer```, ``:func:`~x.f```)
that Markdown would show verbatim; this turns each into a code span of the name
(``tools.docs_api.strip_roles``). Loaded by mkdocstrings (``extensions`` in ``mkdocs.yml``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.docs_api import strip_roles  # noqa: E402


class SphinxRoles(griffe.Extension):
    """Rewrites each object's docstring once, when griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
