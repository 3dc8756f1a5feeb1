"""Brevitas's quantizers of the same name as qzoo's, and its layers, imported only when used.

Brevitas 0.13 keeps the OCP FP8 and MX quantizers in ``brevitas.quant.float_quant_ocp`` and
``brevitas.quant.mx_quant_ocp`` (the ``experimental`` path is deprecated); the integer ones are
re-exported by ``brevitas.quant``.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any, Optional

_MODULES = ("brevitas.quant", "brevitas.quant.float_quant_ocp", "brevitas.quant.mx_quant_ocp")


@functools.lru_cache(maxsize=None)
def brevitas_available() -> bool:
    try:
        _import("brevitas.nn")
    except ImportError:
        return False
    return True


def brevitas_version() -> Optional[str]:
    if not brevitas_available():
        return None
    return _import("brevitas").__version__


def brevitas_quantizer(name: str) -> Optional[type]:
    """Brevitas's quantizer class called ``name``, or None when Brevitas has none (or is absent)."""
    if not brevitas_available():
        return None
    for module_name in _MODULES:
        try:
            module = _import(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    return None


def brevitas_nn() -> Any:
    """The ``brevitas.nn`` module."""
    return _import("brevitas.nn")


def _import(name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)
