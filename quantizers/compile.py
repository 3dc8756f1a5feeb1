"""When the quantization kernels run fused by ``torch.compile``: the compile policy.

Kernels are plain tensor functions; :func:`compiled` wraps each one. Compiled and eager kernels
give bit-identical results, so the policy only decides speed. It is chosen with
:func:`set_compile_enabled` or the environment variable ``QZOO_COMPILE`` (read at each call):

- ``"auto"`` (the default; ``set_compile_enabled(None)`` with the variable unset): a kernel runs
  eager until a configuration of it has cost ``PAYOFF_SECONDS`` of eager time over at least
  ``PAYOFF_CALLS`` calls (a loop, or a large tensor used more than once). A daemon thread then
  compiles that configuration, one configuration at a time, while calls keep running eager; later
  calls with the same configuration (argument objects, tensor shapes, strides, dtypes, devices,
  ``requires_grad``, grad/inference/autocast mode) run the compiled graph. A one-shot
  ``quantize`` of a weight and the first forward of a layer never wait for the compiler, and
  short runs (the tests, a notebook cell) rarely compile at all.
- ``"1"`` / ``set_compile_enabled(True)``: every kernel compiles synchronously on its first call.
- ``"0"`` / ``set_compile_enabled(False)``: always eager.

How a configuration is served: the background thread compiles by calling the compiled kernel on
stand-in tensors of the caller's metadata, in the caller's grad/inference/autocast modes
(:mod:`quantizers.compile_background`); the calling thread runs the compiled graph only through
``torch._dynamo.run`` (run cached graphs, never compile), so it never stalls on the compiler and
any guard it does not match runs eager. A kernel called while another one runs eager is part of
that one and is neither counted nor compiled on its own. ``torch.compile(..., recompile_limit=RECOMPILE_LIMIT)``
gives each kernel room for one graph per configuration; that option applies in whichever thread
compiles, so qzoo never writes the process-global ``torch._dynamo.config`` (whose values are per
thread in torch 2.13). Only compiler errors (``torch._dynamo.exc`` exceptions, inductor's C++ and
lowering errors, the recompile limit) fall back to eager, with one log line per kernel: the
configuration that failed runs eager, or every one after an error of the environment (no C++
compiler); an error the eager kernel raises too is the caller's and is raised. At interpreter exit
queued compiles are dropped and a running one is waited for. ``torch.compiler.is_compiling()`` is
process-wide in torch 2.13 (true in every thread while any thread compiles), so qzoo code that must
know whether it is being traced asks :func:`is_tracing`.

Under pytest (or anything else that iterates ``logging.Logger.manager.loggerDict`` while kernels
run): the first background compile imports torch's compiler stack in its thread, about 1600
modules creating about 280 loggers, which can break pytest's log capture with ``RuntimeError:
dictionary changed size during iteration``. Compile anything once in the main thread before the
tests run (qzoo's own ``tests/conftest.py`` does it in ``pytest_sessionstart``), or choose ``"0"``
or ``"1"``.

Measured on the 2-core CI-size CPU (torch 2.13; a machine shared with other jobs, so indicative):
in a fresh process with an empty inductor cache, the first ``quantize`` of a 1024x1024 weight to
MXFP4 takes 0.16-0.28 s and the first eval forward of a ``QuantLinear(1024, 1024)`` with a
calibrated static FP8 input (batch 64) 0.10-0.69 s; compiled on first call (``QZOO_COMPILE=1``)
they took 10.9 s and 3.5 s. Eager fake quantization of a 4096x4096 weight costs 6-50x a
``clone()`` and the compiled kernel 1.4-3x (the same under both policies), so compiling pays from
the second call of a tensor that size and after a few hundred calls of a batch-64 activation; in
the test suite at most one or two configurations pay (outside the policy's own tests). See ``benchmarks/coldstart.py`` and the
README's performance table.
"""
from __future__ import annotations

import enum
import functools
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Hashable, Optional, TypeVar

import torch
from torch._guards import CompileContext

from . import compile_background as background

logger = logging.getLogger(__name__)

ENV_VAR = "QZOO_COMPILE"
_FALSE_WORDS = ("0", "false", "off", "no")
_TRUE_WORDS = ("1", "true", "on", "yes")
_AUTO_WORDS = ("", "auto")

#: Graphs one kernel may hold (one per quantizer configuration, dtype, shape of a parameter...).
RECOMPILE_LIMIT = 256
#: Eager seconds and calls a configuration must have cost before "auto" compiles it.
PAYOFF_SECONDS = 0.5
PAYOFF_CALLS = 2
_MAX_TRACKED = 4096  # configurations remembered per kernel before the usage tables start over
_BACKEND = "inductor"

_enabled: Optional[bool] = None
F = TypeVar("F", bound=Callable)


def set_compile_enabled(enabled: Optional[bool]) -> None:
    """Force compilation on (``True``: compile on first call) or off (``False``); ``None``
    defers to ``QZOO_COMPILE`` (unset: the ``"auto"`` policy of this module's docstring)."""
    global _enabled
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    _enabled = enabled


def compile_setting() -> Optional[bool]:
    """What :func:`set_compile_enabled` last set (``None``: deferring to ``QZOO_COMPILE``), so a
    caller that changes it can restore it."""
    return _enabled


def compile_policy() -> str:
    """``"off"``, ``"auto"`` or ``"on"``: :func:`set_compile_enabled`, else ``QZOO_COMPILE``."""
    if _enabled is not None:
        return "on" if _enabled else "off"
    word = os.environ.get(ENV_VAR, "").strip().lower()
    if word in _AUTO_WORDS:
        return "auto"
    if word in _FALSE_WORDS:
        return "off"
    if word in _TRUE_WORDS:
        return "on"
    allowed = ", ".join(repr(w) for w in ("auto",) + _TRUE_WORDS + _FALSE_WORDS)
    raise ValueError(f"{ENV_VAR}={word!r} is not understood; allowed values: {allowed}")


def compile_enabled() -> bool:
    """Whether kernels may run compiled (the policy is ``"auto"`` or ``"on"``)."""
    return compile_policy() != "off"


def wait_for_compiles(timeout: Optional[float] = None) -> bool:
    """Block until the background compiler has nothing queued or running (``timeout`` seconds at
    most); ``True`` if it is idle. For benchmarks and tests that want the steady state now."""
    return background.compiler.wait(timeout)


def background_compiles() -> int:
    """How many configurations the ``"auto"`` policy has queued for compilation so far."""
    return background.compiler.submitted


def is_tracing() -> bool:
    """Whether ``torch.compile`` (or ``torch.export``) is tracing the calling code, in this thread.

    Use it instead of ``torch.compiler.is_compiling()``, which in torch 2.13 is a process-wide flag:
    while the background compiler (or any thread) compiles, it is ``True`` in every thread, and
    eager code elsewhere would skip its checks, caches and observer synchronisation. Under
    tracing, Dynamo evaluates this function once and keeps the result as a constant.
    """
    if torch.compiler.is_exporting():  # torch.export traces too (strict or not): no value checks, no caches
        return True
    if not torch.compiler.is_compiling():
        return False
    return CompileContext.try_get() is not None


# What torch.compiler.assume_constant_result(is_tracing) does, without importing torch._dynamo (two
# seconds) when qzoo is imported; test_compile_policy checks that a compiled graph sees True.
is_tracing._dynamo_marked_constant = True  # type: ignore[attr-defined]


def compiled(fn: F, dynamic: Optional[bool] = None) -> F:
    """``fn`` run eager or compiled (``fullgraph=True``) as the compile policy says.

    ``dynamic`` is passed to ``torch.compile`` (``None``: automatic dynamic shapes; ``False``: one
    graph per shape, for tensors whose shape never changes, such as parameters). Inside a region
    the caller is already compiling, ``fn`` is called directly (Dynamo inlines it).
    """
    kernel = _Kernel(fn, dynamic)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if is_tracing():
            return fn(*args, **kwargs)
        return kernel(args, kwargs)

    wrapper.eager = fn  # type: ignore[attr-defined]
    wrapper.kernel = kernel  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# ---- errors --------------------------------------------------------------------------------------
def _is_compiler_error(error: BaseException) -> bool:
    """Raised by Dynamo or inductor (tracing, lowering, C++ build, recompile limit), not by the
    kernel's own arithmetic."""
    from torch._dynamo import exc as dynamo_exc

    if isinstance(error, (dynamo_exc.TorchDynamoException, dynamo_exc.FailOnRecompileLimitHit)):
        return True
    try:
        from torch._inductor import exc as inductor_exc
    except ImportError:  # pragma: no cover - torch without inductor
        return False
    return isinstance(error, (inductor_exc.OperatorIssue, inductor_exc.InvalidCxxCompiler, inductor_exc.CppCompileError))


def _is_environment_error(error: BaseException) -> bool:
    """A compiler error no configuration can avoid: no working C++ compiler, a C++ build that fails,
    no Triton (checked on the error and on the inner error Dynamo wraps it in)."""
    try:
        from torch._inductor import exc as inductor_exc
    except ImportError:  # pragma: no cover - torch without inductor
        return True
    kinds = tuple(
        getattr(inductor_exc, name) for name in ("InvalidCxxCompiler", "CppCompileError", "TritonMissing")
        if hasattr(inductor_exc, name)
    )
    return isinstance(error, kinds) or isinstance(getattr(error, "inner_exception", None), kinds)


def _describe(error: BaseException) -> str:
    """``Type: first line``, of the compiler's inner error where Dynamo wraps one."""
    inner = getattr(error, "inner_exception", None)
    if isinstance(inner, BaseException):
        error = inner
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


_local = threading.local()  # depth: > 0 while this thread runs a kernel eagerly


# ---- one kernel ------------------------------------------------------------------------------------
class _State(enum.Enum):
    QUEUED = "queued"
    READY = "ready"
    FAILED = "failed"


class _Kernel:
    """A kernel's compiled twin and, for the ``"auto"`` policy, which configurations it serves."""

    def __init__(self, fn: Callable, dynamic: Optional[bool]) -> None:
        self.fn = fn
        self.dynamic = dynamic
        self.broken = False  # a compiler error: eager from then on
        self._warned = False
        self._compiled_fn: Optional[Callable] = None
        self._run_cached_fn: Optional[Callable] = None
        self._lock = threading.Lock()
        self._usage: Dict[Hashable, list] = {}  # shape-free key -> [calls, eager seconds]
        self._states: Dict[Hashable, _State] = {}  # full key -> state

    @property
    def _compiled(self) -> Callable:
        if self._compiled_fn is None:
            self._compiled_fn = torch.compile(
                self.fn, fullgraph=True, dynamic=self.dynamic, backend=_BACKEND, recompile_limit=RECOMPILE_LIMIT
            )
        return self._compiled_fn

    @property
    def _run_cached(self) -> Callable:
        """``fn`` run with Dynamo's cached graphs only: a guard miss runs eager, never compiles."""
        if self._run_cached_fn is None:
            self._run_cached_fn = torch._dynamo.run(self.fn)
        return self._run_cached_fn

    def __call__(self, args: tuple, kwargs: dict) -> Any:
        policy = compile_policy()
        if policy == "off" or self.broken:
            return self.fn(*args, **kwargs)
        if policy == "on":
            return self._call_compiled(args, kwargs)
        if getattr(_local, "depth", 0):  # inside another kernel's eager run: that one compiles
            return self.fn(*args, **kwargs)
        try:
            key = (background.call_key(args, kwargs), background.current_modes())
        except background.NotServable:
            return self.fn(*args, **kwargs)
        state = self._states.get(key)
        if state is _State.READY:
            return self._run_cached(*args, **kwargs)
        start = time.perf_counter()
        _local.depth = 1
        try:
            result = self.fn(*args, **kwargs)
        finally:
            _local.depth = 0
        if state is None:
            self._count(key, time.perf_counter() - start, args, kwargs)
        return result

    def _call_compiled(self, args: tuple, kwargs: dict) -> Any:
        try:
            return self._compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - only compiler errors fall back; see below
            if not _is_compiler_error(error):
                raise
            result = self.fn(*args, **kwargs)  # the caller's own errors raise here
            self._compiler_failed(error, whole_kernel=not _is_recompile_limit(error))
            return result

    def _count(self, key: Hashable, seconds: float, args: tuple, kwargs: dict) -> None:
        """Add a call's eager ``seconds`` to its configuration; queue ``key`` once that pays."""
        group = background.shape_free(key)
        with self._lock:
            if len(self._usage) > _MAX_TRACKED or len(self._states) > _MAX_TRACKED:
                self._usage.clear()
                self._states.clear()
            usage = self._usage.setdefault(group, [0, 0.0])
            usage[0] += 1
            usage[1] += seconds
            if usage[0] < PAYOFF_CALLS or usage[1] < PAYOFF_SECONDS or key in self._states:
                return
            self._states[key] = _State.QUEUED
        logger.debug("qzoo: compiling %s in the background after %d calls, %.2f s eager", self.fn.__qualname__, *usage)
        job = functools.partial(self._compile_in_background, key, background.spec_of((args, kwargs)))
        background.compiler.submit(job)

    def _compile_in_background(self, key: Hashable, spec: Any) -> None:
        """Compile ``key``'s graph by calling the compiled kernel on stand-in tensors of the same
        metadata, in the caller's modes (and its backward, which AOTAutograd compiles lazily on the
        first backward); the caller's own tensors are never touched here."""
        if self.broken:
            return
        args, kwargs = background.materialize(spec)
        modes = key[1]
        try:
            background.run_in_modes(modes, lambda: background.forward_and_backward(self._compiled, args, kwargs))
            self._states[key] = _State.READY
        except Exception as error:  # noqa: BLE001 - a background failure must never surface
            self._states[key] = _State.FAILED
            if background.compiler.closed or not _is_compiler_error(error):
                logger.debug("qzoo: stand-in call of %s raised %r", self.fn.__qualname__, error)
                return
            try:
                background.run_in_modes(modes, lambda: self.fn(*args, **kwargs))
            except Exception:  # noqa: BLE001 - the stand-in values, not the compiler, were at fault
                return
            self._compiler_failed(error, whole_kernel=_is_environment_error(error))

    def _compiler_failed(self, error: BaseException, whole_kernel: bool) -> None:
        """Log the first failure of this kernel; ``whole_kernel``: run eager from now on (else only
        the failed configuration does)."""
        with self._lock:
            first, self._warned = not self._warned, True
            self.broken = self.broken or whole_kernel
        if first:
            logger.warning(
                "qzoo: torch.compile of %s failed (%s); using the eager kernel %s. Set %s=0 to "
                "skip compilation.", self.fn.__qualname__, _describe(error),
                "from now on" if whole_kernel else "for the configurations that fail to compile", ENV_VAR,
            )


def _is_recompile_limit(error: BaseException) -> bool:
    from torch._dynamo.exc import FailOnRecompileLimitHit

    return isinstance(error, FailOnRecompileLimitHit)
