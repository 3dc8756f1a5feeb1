"""Peak memory of one step: the most tensor bytes alive at any moment while it runs.

``peak = resident + transient``:

- ``resident``: bytes of the tensors that exist before the step and stay (parameters, buffers,
  the input batch and its output gradient), counted once per storage;
- ``transient``: the peak, during the step, of the bytes it allocated and has not yet freed
  (activations and tensors saved for backward, quantized copies, temporaries, gradients).

On CUDA the transient peak is ``torch.cuda.max_memory_allocated()`` after
``reset_peak_memory_stats()``, minus the bytes allocated before the step. On CPU there are no
allocator statistics and ``tracemalloc``/RSS do not see (or round away) torch's allocations, so
the step runs once under ``torch.profiler.profile(profile_memory=True)``: the profiler records every
allocation and free of torch's CPU allocator with its size, and the transient peak is the maximum
of their running sum in time order. This counts tensor bytes exactly (those of compiled kernels
too) and is independent of malloc's caching; it does not count the allocator's own overhead,
Python objects or the compiler's memory.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator

import torch


@dataclass
class MemoryProbe:
    """A step to measure: ``reset()`` puts the state back (gradients to None) before each run,
    ``step()`` runs it, ``resident`` lists the tensors that live across steps."""

    step: Callable[[], Any]
    reset: Callable[[], Any]
    resident: Callable[[], Iterable[torch.Tensor]]


def resident_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: Dict[int, int] = {}
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def transient_peak_bytes(step: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated and not yet freed during one ``step()`` (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = cpu_memory_events(prof)
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: Kineto logs every profiler start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_memory_events(prof: Any) -> list:
    """``(time_ns, bytes)`` of every CPU allocation (+) and free (-) the profiler recorded."""
    cpu = torch._C._autograd.DeviceType.CPU
    return sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == cpu
    )


def measure_peak(probe: MemoryProbe, device: torch.device, warmup: int = 2, runs: int = 3) -> Dict[str, int]:
    """``{"resident", "transient", "peak"}`` bytes of ``probe``'s step, after ``warmup`` unmeasured
    steps (compilation, lazily built state); the transient peak is the largest over ``runs``."""
    for _ in range(warmup):
        probe.reset()
        probe.step()
    transient = 0
    for _ in range(runs):
        probe.reset()
        transient = max(transient, transient_peak_bytes(probe.step, device))
    probe.reset()
    resident = resident_bytes(probe.resident())
    return {"resident": resident, "transient": transient, "peak": resident + transient}
