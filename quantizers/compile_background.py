"""The background compiler of the ``"auto"`` compile policy (see :mod:`quantizers.compile`).

A kernel call is described by its arguments with every tensor replaced by a :class:`TensorSpec`
(what Dynamo guards on: shape, strides, dtype, device, ``requires_grad``, parameter or not,
inference tensor or not) and by the calling thread's :class:`Modes`. From that description the
worker thread builds stand-in tensors (zeros of the same metadata) and calls the compiled kernel on
them, so the graph Dynamo caches is the one the caller's next call will hit, while the caller's own
tensors are never touched by another thread. Keys made from descriptions decide which calls a
compiled graph serves: plain values by value, other objects (formats, scalers) by identity.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import enum
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Deque, Hashable, List, Optional, Tuple

import torch
from torch import nn


_TENSOR_TYPES = (torch.Tensor, nn.Parameter)
_PLAIN_TYPES = frozenset((type(None), bool, int, float, str, torch.dtype, torch.device))


class NotServable(Exception):
    """An argument the background compiler cannot stand in for (a tensor subclass, a meta
    tensor): such calls run eager."""


def call_key(args: tuple, kwargs: dict) -> Hashable:
    """The key of a call: which compiled graph serves it (cheap: it is computed on every call).

    A tensor is keyed by ``(type, shape, stride, dtype, device, requires_grad, is_inference)``,
    plain values (None, bool, int, float, str, dtype, device, enums) by type and value, containers
    item by item, other objects (formats, granularities, scalers) by type and identity.
    """
    key = tuple(_leaf_key(value) for value in args)
    if kwargs:
        key += (tuple((name, _leaf_key(value)) for name, value in kwargs.items()),)
    return key


def _leaf_key(value: Any) -> Hashable:
    kind = type(value)
    if kind in _TENSOR_TYPES:
        if value.is_meta:
            raise NotServable("a meta tensor")
        return (kind, value.shape, value.stride(), value.dtype, value.device, value.requires_grad, value.is_inference())
    if kind in _PLAIN_TYPES:
        return (kind, value)
    if kind is tuple or kind is list:
        return (kind,) + tuple(_leaf_key(item) for item in value)
    if isinstance(value, torch.Tensor):
        raise NotServable(f"a {kind.__name__}")
    if isinstance(value, enum.Enum):
        return (kind, value)
    if isinstance(value, dict):
        return (dict,) + tuple((name, _leaf_key(item)) for name, item in value.items())
    return (kind, id(value))


def shape_free(key: Hashable) -> Hashable:
    """``key`` with each tensor's shape and strides replaced by its number of dimensions: the
    configuration whose eager time decides whether compiling pays (a new shape of a paid-for
    configuration compiles at once)."""
    if isinstance(key, tuple) and key and key[0] in _TENSOR_TYPES and len(key) == 7:
        kind, shape, _, dtype, device, requires_grad, inference = key
        return (kind, len(shape), dtype, device, requires_grad, inference)
    if isinstance(key, tuple):
        return tuple(shape_free(item) for item in key)
    return key


@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument's metadata: enough to build a stand-in Dynamo guards on alike."""

    shape: Tuple[int, ...]
    stride: Tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    parameter: bool
    inference: bool

    def materialize(self) -> torch.Tensor:
        """Zeros with this metadata (the values do not matter to the compiler)."""
        with torch.inference_mode(self.inference):
            tensor = torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device).zero_()
        if self.parameter:
            return nn.Parameter(tensor, requires_grad=self.requires_grad)
        return tensor.requires_grad_(self.requires_grad)


def spec_of(value: Any) -> Any:
    """``value`` with every tensor replaced by its :class:`TensorSpec`; other objects kept."""
    if isinstance(value, torch.Tensor):
        return TensorSpec(
            tuple(value.shape), value.stride(), value.dtype, value.device, value.requires_grad,
            type(value) is nn.Parameter, value.is_inference(),
        )
    if isinstance(value, (tuple, list)):
        return type(value)(spec_of(v) for v in value)
    if isinstance(value, dict):
        return {name: spec_of(v) for name, v in value.items()}
    return value


def materialize(value: Any) -> Any:
    """A spec'd argument with stand-in tensors in place of the specs."""
    if isinstance(value, TensorSpec):
        return value.materialize()
    if isinstance(value, (tuple, list)):
        return type(value)(materialize(v) for v in value)
    if isinstance(value, dict):
        return {name: materialize(v) for name, v in value.items()}
    return value


def _tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def forward_and_backward(fn: Callable, args: tuple, kwargs: dict) -> None:
    """``fn(*args, **kwargs)`` and, where its outputs need gradients, a backward pass to the
    inputs that require them, so the backward graph is compiled here too."""
    outputs = [t for t in _tensors(fn(*args, **kwargs)) if t.requires_grad]
    inputs = [t for t in _tensors((args, kwargs)) if t.requires_grad]
    if outputs and inputs:
        torch.autograd.grad(outputs, inputs, [torch.ones_like(t) for t in outputs], allow_unused=True)


_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None)
_AUTOCAST_DEVICES = ("cpu", "cuda")


def current_modes() -> Hashable:
    """The calling thread's modes that Dynamo guards on and a stand-in call must reproduce:
    ``(grad enabled, inference mode, autocast)``, autocast ``None`` when off on every device
    (else per device ``(enabled, dtype)``)."""
    autocast = None
    if _any_autocast is None or _any_autocast():
        autocast = tuple((torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES)
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocast)


def run_in_modes(modes: Hashable, fn: Callable[[], Any]) -> Any:
    """``fn()`` in this thread with :func:`current_modes` ``modes``."""
    grad, inference, autocast = modes
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(inference))
        stack.enter_context(torch.set_grad_enabled(grad))
        for device, (enabled, dtype) in zip(_AUTOCAST_DEVICES, autocast or ()):
            stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
        return fn()


EXIT_WAIT_SECONDS = 600.0


class BackgroundCompiler:
    """One daemon thread that runs queued compile jobs one at a time (compiles are CPU-bound and
    Python-heavy; two at once would only slow each other and the caller).

    The thread exits as soon as the queue is empty and a new one starts with the next job. A
    thread that ran a compiled kernel owns an OpenMP thread team for as long as it lives; with
    libgomp, more OpenMP threads alive than CPUs throttles every team's spin-wait, so each parallel
    region of the caller's kernels waits for its workers to wake up. Measured on the 2-core CPU of
    ``benchmarks/``: an FP8 fake quantization of a 64x1024 activation took 100-130 us per call
    while an idle compile thread lived, 46 us once it had exited.
    """

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
        """At interpreter exit: drop queued jobs and wait for a running one (at most
        ``EXIT_WAIT_SECONDS``). A thread stopped inside the compiler or a compiled kernel while
        the interpreter finalizes can abort the process ("terminate called without an active
        exception"), so the exit waits for the compile in flight instead."""
        with self._condition:
            self._closed = True
            self._queue.clear()
        self.wait(EXIT_WAIT_SECONDS)

    @property
    def closed(self) -> bool:
        return self._closed

    def _work(self) -> None:
        while True:
            with self._condition:
                if not self._queue:  # idle: exit (see the class docstring); submit starts another
                    self._thread = None
                    return
                job = self._queue.popleft()
                self._busy = True
            try:
                job()
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()


compiler = BackgroundCompiler()
# Before the atexit handlers (inductor's stop its compile workers): where threading offers it, at
# the point the interpreter joins non-daemon threads.
getattr(threading, "_register_atexit", atexit.register)(compiler.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=compiler._reset)  # the thread and its lock stay in the parent
