"""Fusing the quantization kernels with ``torch.compile``, with an eager fallback.

Kernels are plain tensor functions. :func:`compiled` wraps one so that its first call compiles it
(``fullgraph=True``); later calls reuse the compiled graph, specialised per dtype, device and
quantizer configuration. Shapes follow torch's automatic dynamic shapes: the first graph is
specialised to its shapes (which lets inductor keep group sizes static and write gradients in
place: ``dynamic=True`` cost a weight-sized copy per QAT step), and the first change of shape
recompiles once with dynamic shapes, which every later shape reuses. Parameters, whose shapes
never change, use graphs specialised to each shape (one per distinct layer shape). If compilation fails (for
example, no C++ compiler for inductor on CPU), qzoo logs one message and runs the eager function
from then on; results are bit-identical either way.

Turn compilation off with ``quantizers.set_compile_enabled(False)`` or the environment variable
``QZOO_COMPILE=0`` (read at each call, so tests and notebooks can set it late).
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Optional, TypeVar

import torch

logger = logging.getLogger(__name__)

ENV_VAR = "QZOO_COMPILE"
_FALSE_WORDS = ("0", "false", "off", "no")
_RECOMPILE_LIMIT = 256  # one graph per quantizer configuration; the default (8) is far too low

_enabled: Optional[bool] = None
F = TypeVar("F", bound=Callable)


def set_compile_enabled(enabled: Optional[bool]) -> None:
    """Force compilation on (``True``) or off (``False``); ``None`` defers to ``QZOO_COMPILE``."""
    global _enabled
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    _enabled = enabled


def compile_enabled() -> bool:
    """Whether kernels run compiled: :func:`set_compile_enabled`, else ``QZOO_COMPILE`` (default on)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _FALSE_WORDS


def _raise_recompile_limits() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < _RECOMPILE_LIMIT:
            setattr(config, name, _RECOMPILE_LIMIT)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < 4 * _RECOMPILE_LIMIT:
            setattr(config, name, 4 * _RECOMPILE_LIMIT)


def compiled(fn: F, dynamic: Optional[bool] = None) -> F:
    """``fn`` compiled on first use when compilation is enabled; ``fn`` itself otherwise.

    ``dynamic`` is passed to ``torch.compile`` (``None``: automatic dynamic shapes; ``False``: one
    graph per shape, for tensors whose shape never changes, such as parameters). Inside a region
    the caller is already compiling, ``fn`` is called directly (Dynamo inlines it).
    """
    state = {"compiled": None, "failed": False}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if state["failed"] or not compile_enabled() or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if state["compiled"] is None:
            _raise_recompile_limits()
            state["compiled"] = torch.compile(fn, fullgraph=True, dynamic=dynamic)
        try:
            return state["compiled"](*args, **kwargs)
        except Exception as error:  # a compiler failure: fall back, unless the function itself fails
            result = fn(*args, **kwargs)
            state["failed"] = True
            logger.warning(
                "qzoo: torch.compile of %s failed (%s: %s); using the eager kernel from now on. "
                "Set %s=0 to skip compilation.", fn.__qualname__, type(error).__name__,
                str(error).splitlines()[0] if str(error) else "", ENV_VAR,
            )
            return result

    wrapper.eager = fn  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
