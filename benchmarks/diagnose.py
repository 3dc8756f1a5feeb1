"""``python -m benchmarks.diagnose SUBSTRING``: where the time of a case's contender goes.

For every case whose id contains ``SUBSTRING`` (``--list`` in ``benchmarks.run`` shows them), after
a warm-up it prints, for the ``--label`` contender (default qzoo; ``--label float`` etc. too):

1. the per-call time of every contender (interleaved, as in the suite);
2. ``torch.profiler``: operators by self CPU time, with calls per step, and the bytes the step
   allocates (a proxy for passes over memory: each allocation is written at least once);
3. ``cProfile``: the Python functions with the most own time per step (Python overhead);
4. the graphs ``torch.compile`` built during the profiled steps (recompilations), with the
   reasons when ``--recompiles`` is given.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
from typing import Any, Callable, List, Optional

import torch

from .brevitas_twins import brevitas_available
from .cases import Case, Context
from .memory import cpu_memory_events, quiet_stderr
from .run import all_cases
from .timing import graphs_compiled, settle, time_interleaved

MIB = 1024 * 1024


def profile_ops(fn: Callable[[], Any], calls: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
        for _ in range(calls):
            fn()
    allocated = sum(nbytes for _, nbytes in cpu_memory_events(prof) if nbytes > 0)
    averages = prof.key_averages()
    total_self = sum(event.self_cpu_time_total for event in averages)
    print(f"  profiler: {total_self / calls / 1e3:.2f} ms self CPU per step (profiled, so inflated), "
          f"{sum(e.count for e in averages) / calls:.0f} operator calls per step, "
          f"{allocated / calls / MIB:.2f} MiB allocated per step")
    print(f"  {'operator':<58} {'calls/step':>10} {'self ms/step':>12} {'self %':>7} {'alloc MiB/step':>14}")
    for event in sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]:
        print(
            f"  {event.key[:58]:<58} {event.count / calls:>10.1f} {event.self_cpu_time_total / calls / 1e3:>12.3f} "
            f"{100 * event.self_cpu_time_total / max(total_self, 1):>6.1f}% "
            f"{max(event.self_cpu_memory_usage, 0) / calls / MIB:>14.2f}"
        )


def profile_python(fn: Callable[[], Any], calls: int, rows: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("tottime").print_stats(rows)
    print(f"  cProfile ({calls} steps; times are totals over all steps):")
    keep = False
    for line in stream.getvalue().splitlines():
        if line.strip().startswith("ncalls"):
            keep = True
        if keep and line.strip():
            print("   ", line[:160])


def diagnose(case: Case, ctx: Context, label: str, calls: int, rows: int, recompiles: bool) -> None:
    print(f"\n## {case.id}  [{label}]")
    if case.kind == "cold":
        print("  (cold-start case: run benchmarks.run --only cold_start)")
        return
    contenders = case.build(ctx)
    if case.kind != "time":
        print("  (memory case: run benchmarks.run --only for its numbers; profiling its step as time)")
        contenders = {name: probe.step for name, probe in contenders.items()}
    if label not in contenders:
        print(f"  no contender {label!r}; have {', '.join(contenders)}")
        return
    settle(contenders[case.candidate])  # the compile policy's steady state, as benchmarks.run times
    timings = time_interleaved(contenders, repeats=7, warmup=2, min_sample_s=0.05)
    print("  per call: " + ", ".join(
        f"{name} {t.median_ms:.3f} ms (min {t.min_ms:.3f}, first {t.first_call_ms:.0f})" for name, t in timings.items()
    ))
    fn = contenders[label]
    if recompiles:
        torch._logging.set_logs(recompiles=True)
    before = graphs_compiled()
    profile_ops(fn, calls, rows)
    profile_python(fn, calls, rows)
    print(f"  graphs compiled during the {2 * calls} profiled steps: {graphs_compiled() - before}")
    if recompiles:
        torch._logging.set_logs()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("substring", nargs="+", help="case ids containing any of these")
    parser.add_argument("--label", default="qzoo", help="contender to profile (qzoo, float, clone, brevitas)")
    parser.add_argument("--calls", type=int, default=20, help="steps per profile")
    parser.add_argument("--rows", type=int, default=15, help="rows per table")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: CPU count)")
    parser.add_argument("--no-brevitas", action="store_true")
    parser.add_argument("--recompiles", action="store_true", help="log torch.compile recompilation reasons")
    parser.add_argument("--no-kernel-names", action="store_true", help="do not name compiled C++ kernels in the profile")
    args = parser.parse_args(argv)
    if not args.no_kernel_names:
        # Compiled CPU kernels then show in the profile as cpp_fused_* (one per loop nest), which
        # counts the passes over memory; it costs a recompile (another cache key).
        torch._inductor.config.cpp.enable_kernel_profile = True
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    ctx = Context(device=torch.device("cpu"), quick=False, brevitas=not args.no_brevitas and brevitas_available())
    cases = [case for case in all_cases() if any(s in case.id for s in args.substring)]
    if not cases:
        print(f"no case matches {args.substring}", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    for case in cases:
        diagnose(case, ctx, args.label, args.calls, args.rows, args.recompiles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
