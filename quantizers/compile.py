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

How a configuration is served: the calling thread runs the compiled graph only through
``torch._dynamo.run`` (run cached graphs, never compile), so it never stalls on the compiler and
any guard it does not match runs eager. ``torch.compile(..., recompile_limit=RECOMPILE_LIMIT)``
gives each kernel room for one graph per configuration; that option applies in whichever thread
compiles, so qzoo never writes the process-global ``torch._dynamo.config`` (whose values are per
thread in torch 2.13). Only compiler errors (``torch._dynamo.exc`` exceptions, inductor's C++ and
lowering errors, the recompile limit) fall back to eager, with one log line per kernel; an error
the eager kernel raises too is the caller's and is raised.

Measured on the 2-core CI-size CPU (torch 2.13, shared machine, so indicative): in a fresh process
with an empty inductor cache, ``import quantizers, qlayers`` takes 0.1 s after torch's 1.2 s, the
first ``quantize`` of a 1024x1024 weight to MXFP4 0.16 s, and the first eval forward of a
``QuantLinear(1024, 1024)`` with a static FP8 input quantizer (batch 64) 0.2 s; compiling the same
kernels synchronously took 13.6 s and 1.9 s. Eager fake quantization of a 4096x4096 weight costs
6-50x a ``clone()`` (compiled: 1.2-1.8x), so the background compile pays from the second call of
a tensor that size, and after a few hundred calls of a batch-64 activation. See
``benchmarks/coldstart.py`` and the README's performance table.
"""
from __future__ import annotations

import atexit
import collections
import enum
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Hashable, Optional, Tuple, TypeVar

import torch
from torch import nn

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
    return _compiler.wait(timeout)


def background_compiles() -> int:
    """How many configurations the ``"auto"`` policy has queued for compilation so far."""
    return _compiler.submitted


def compiled(fn: F, dynamic: Optional[bool] = None) -> F:
    """``fn`` run eager or compiled (``fullgraph=True``) as the compile policy says.

    ``dynamic`` is passed to ``torch.compile`` (``None``: automatic dynamic shapes; ``False``: one
    graph per shape, for tensors whose shape never changes, such as parameters). Inside a region
    the caller is already compiling, ``fn`` is called directly (Dynamo inlines it).
    """
    kernel = _Kernel(fn, dynamic)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
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


# ---- configuration keys --------------------------------------------------------------------------
@dataclass(frozen=True)
class _TensorSpec:
    """What Dynamo guards on for a tensor argument: enough to build a stand-in of it."""

    shape: Tuple[int, ...]
    stride: Tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    parameter: bool
    inference: bool

    def group(self) -> Hashable:
        return (len(self.shape), self.dtype, self.device, self.requires_grad, self.parameter, self.inference)

    def materialize(self) -> torch.Tensor:
        with torch.inference_mode(self.inference):
            tensor = torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device).zero_()
        if self.parameter:
            return nn.Parameter(tensor, requires_grad=self.requires_grad)
        return tensor.requires_grad_(self.requires_grad)


_local = threading.local()  # depth: > 0 while this thread runs a kernel eagerly
_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device, enum.Enum)


class _NotServable(Exception):
    """An argument the background compiler cannot stand in for (a tensor subclass, a meta
    tensor): such calls run eager."""


def _spec(value: Any) -> Any:
    """``value`` with every tensor replaced by its :class:`_TensorSpec`; other objects kept."""
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, nn.Parameter) or value.device.type == "meta":
            raise _NotServable(f"{type(value).__name__} on {value.device}")
        return _TensorSpec(
            tuple(value.shape), value.stride(), value.dtype, value.device, value.requires_grad,
            type(value) is nn.Parameter, value.is_inference(),
        )
    if isinstance(value, (tuple, list)):
        return type(value)(_spec(v) for v in value)
    if isinstance(value, dict):
        return {name: _spec(v) for name, v in value.items()}
    return value


def _key(value: Any, with_shapes: bool) -> Hashable:
    """A hashable key of a spec'd argument: tensors by spec (with or without shapes), plain
    values by value, other objects by identity (so equal-looking objects are never confused)."""
    if isinstance(value, _TensorSpec):
        return value if with_shapes else value.group()
    if isinstance(value, (tuple, list)):
        return (type(value),) + tuple(_key(v, with_shapes) for v in value)
    if isinstance(value, dict):
        return (dict,) + tuple((name, _key(v, with_shapes)) for name, v in value.items())
    if isinstance(value, _PLAIN):
        return (type(value), value)
    return (type(value), id(value))


def _materialize(value: Any) -> Any:
    if isinstance(value, _TensorSpec):
        return value.materialize()
    if isinstance(value, (tuple, list)):
        return type(value)(_materialize(v) for v in value)
    if isinstance(value, dict):
        return {name: _materialize(v) for name, v in value.items()}
    return value


@dataclass(frozen=True)
class _Modes:
    """The calling thread's modes that Dynamo guards on and a stand-in call must reproduce."""

    grad: bool
    inference: bool
    autocast: Tuple[Tuple[str, bool, torch.dtype], ...]

    @staticmethod
    def current() -> "_Modes":
        autocast = tuple(
            (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
            for device in ("cpu", "cuda")
        )
        return _Modes(torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocast)

    def run(self, fn: Callable[[], Any]) -> Any:
        with torch.inference_mode(self.inference), torch.set_grad_enabled(self.grad):
            with torch.autocast("cpu", dtype=self.autocast[0][2], enabled=self.autocast[0][1]):
                if self.autocast[1][1]:
                    with torch.autocast("cuda", dtype=self.autocast[1][2]):
                        return fn()
                return fn()


# ---- the background compiler -----------------------------------------------------------------------
class _Compiler:
    """One daemon thread that runs queued compile jobs one at a time (compiles are CPU-bound and
    Python-heavy; two at once would only slow each other and the caller)."""

    def __init__(self) -> None:
        self._reset()
        self.submitted = 0

    def _reset(self) -> None:
        self._queue: Deque[Callable[[], None]] = collections.deque()
        self._condition = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def submit(self, job: Callable[[], None]) -> None:
        with self._condition:
            if self._closed:
                return
            self._queue.append(job)
            self.submitted += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="qzoo-compile", daemon=True)
                self._thread.start()
            self._condition.notify_all()

    def wait(self, timeout: Optional[float]) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self) -> None:
        """At exit: drop queued jobs; a running one dies with the (daemon) thread, unlogged.
        Waiting for it would hold the exit for a whole compile, and inductor's own exit
        handlers stop its compile workers first anyway."""
        with self._condition:
            self._closed = True
            self._queue.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def _work(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queue)
                job = self._queue.popleft()
                self._busy = True
            try:
                job()
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()


_compiler = _Compiler()
atexit.register(_compiler.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_compiler._reset)  # the thread and its lock stay in the parent


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
            spec = _spec((args, kwargs))
        except _NotServable:
            return self.fn(*args, **kwargs)
        modes = _Modes.current()
        key = (_key(spec, True), modes)
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
            self._count(key, (_key(spec, False), modes), time.perf_counter() - start, spec, modes)
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

    def _count(self, key: Hashable, group: Hashable, seconds: float, spec: Any, modes: _Modes) -> None:
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
        _compiler.submit(functools.partial(self._compile_in_background, key, spec, modes))

    def _compile_in_background(self, key: Hashable, spec: Any, modes: _Modes) -> None:
        """Compile ``key``'s graph by calling the compiled kernel on stand-in tensors of the same
        metadata, in the caller's modes; the caller's own tensors are never touched here."""
        if self.broken:
            return
        args, kwargs = _materialize(spec)
        try:
            modes.run(lambda: self._compiled(*args, **kwargs))
            self._states[key] = _State.READY
        except Exception as error:  # noqa: BLE001 - a background failure must never surface
            self._states[key] = _State.FAILED
            if _compiler.closed or not _is_compiler_error(error):
                logger.debug("qzoo: stand-in call of %s raised %r", self.fn.__qualname__, error)
                return
            try:
                modes.run(lambda: self.fn(*args, **kwargs))
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
