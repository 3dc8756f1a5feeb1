"""Interleaved A/B timing: every contender runs once per repetition, in alternating order.

Timing ``A`` for a minute and then ``B`` for a minute compares two different machines when other
processes come and go (this suite often shares its cores). :func:`time_interleaved` instead takes
one sample of every contender per repetition, so a burst of load hits all of them alike, and it
reverses the order on every other repetition so neither always runs first (caches, clock boost).

One call of each contender is timed on its own first (``first_call_ms``: compilation, caches
being filled); the runner then lets qzoo's compile policy settle (:func:`settle`); ``warmup`` more
calls are discarded; then each sample runs ``number`` calls, with
``number`` picked so that a sample lasts at least ``min_sample_s`` (timer resolution and
per-sample jitter stop mattering). Reported: the median and the minimum per-call time over the
samples, and the number of graphs ``torch.compile`` built during the first call and during the
timed samples (non-zero there means a recompilation on the hot path).
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

Fn = Callable[[], Any]


def graphs_compiled() -> int:
    """How many graphs ``torch.compile`` has built in this process so far (0 if unknown)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # pragma: no cover - torch without dynamo
        return 0
    return int(counters["stats"]["unique_graphs"])


@dataclass
class Timing:
    """The timing of one contender: per-call times of its samples, in milliseconds."""

    samples_ms: List[float]
    number: int
    first_call_ms: float
    graphs_first_call: int
    graphs_timed: int
    repeats: int = field(init=False)

    def __post_init__(self) -> None:
        self.repeats = len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    def to_json(self) -> Dict[str, Any]:
        return dict(
            median_ms=self.median_ms, min_ms=self.min_ms, samples_ms=self.samples_ms, number=self.number,
            repeats=self.repeats, first_call_ms=self.first_call_ms,
            graphs_compiled_first_call=self.graphs_first_call, graphs_compiled_timed=self.graphs_timed,
        )


def _clock(fn: Fn, number: int, sync: Optional[Fn]) -> float:
    """Seconds per call of ``fn`` over ``number`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - start) / number


def first_call(fn: Fn, sync: Optional[Fn] = None) -> Tuple[float, int]:
    """Milliseconds of one call of ``fn`` and the graphs ``torch.compile`` built during it."""
    before = graphs_compiled()
    ms = _clock(fn, 1, sync) * 1e3
    return ms, graphs_compiled() - before


def settle(fn: Fn, sync: Optional[Fn] = None, round_s: float = 1.0, quiet_rounds: int = 5, max_s: float = 240.0) -> float:
    """Call ``fn`` until qzoo's ``"auto"`` compile policy has compiled what it compiles for it, and
    return the seconds that took (0 under the other policies).

    Rounds of back-to-back calls last ``round_s``; after each the background compiler is waited
    for; it stops after ``quiet_rounds`` rounds in a row queued no compile, or after ``max_s``. The
    steady state reached is the one a user reaches after calling ``fn`` for that long: a
    configuration compiles once its eager calls have cost ``PAYOFF_SECONDS``.
    """
    from quantizers import compile as qcompile

    if qcompile.compile_policy() != "auto":
        return 0.0
    start, quiet = time.perf_counter(), 0
    while quiet < quiet_rounds and time.perf_counter() - start < max_s:
        before = qcompile.background_compiles()
        round_start = time.perf_counter()
        while time.perf_counter() - round_start < round_s:
            fn()
        if sync is not None:
            sync()
        qcompile.wait_for_compiles(timeout=max(0.0, max_s - (time.perf_counter() - start)))
        quiet = quiet + 1 if qcompile.background_compiles() == before else 0
    return time.perf_counter() - start


def time_interleaved(
    fns: Mapping[str, Fn],
    repeats: int,
    warmup: int = 2,
    min_sample_s: float = 0.05,
    sync: Optional[Fn] = None,
    first_calls: Optional[Mapping[str, Tuple[float, int]]] = None,
) -> Dict[str, Timing]:
    """Time every function of ``fns`` (label -> zero-argument callable), interleaved; see the
    module docstring. ``first_calls`` holds :func:`first_call` results already taken (those
    functions are not timed alone again). ``sync`` waits for queued device work
    (``torch.cuda.synchronize``)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    labels = list(fns)
    first = dict(first_calls or {})
    number: Dict[str, int] = {}
    for label in labels:
        if label not in first:
            first[label] = first_call(fns[label], sync)
        per_call = min(_clock(fns[label], 1, sync) for _ in range(max(warmup, 1)))
        number[label] = max(1, math.ceil(min_sample_s / max(per_call, 1e-9)))

    samples: Dict[str, List[float]] = {label: [] for label in labels}
    timed_graphs = {label: 0 for label in labels}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(repeats):
            order = labels if rep % 2 == 0 else labels[::-1]
            for label in order:
                before = graphs_compiled()
                samples[label].append(_clock(fns[label], number[label], sync) * 1e3)
                timed_graphs[label] += graphs_compiled() - before
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        label: Timing(samples[label], number[label], first[label][0], first[label][1], timed_graphs[label])
        for label in labels
    }


def paired_ratios(candidate: Timing, baseline: Timing) -> List[float]:
    """Per-repetition ratios candidate / baseline (the samples were taken side by side)."""
    return [c / b for c, b in zip(candidate.samples_ms, baseline.samples_ms)]


def relative_spread(values: List[float]) -> float:
    """Interquartile range over median: 0.1 means the middle half lies within +-5% of the median."""
    if len(values) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / statistics.median(values)


def device_sync(device: torch.device) -> Optional[Fn]:
    """The function that waits for ``device``'s queued work, or None on CPU."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return None
