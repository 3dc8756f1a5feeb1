"""``python -m benchmarks.run``: run the suite, print Markdown tables, write JSON.

Options: ``--quick`` (a subset, fewer samples: about five minutes on 2 cores), ``--only SUBSTRING`` (cases whose
id, e.g. ``eval_linear/w=MXFloat4e2m1Weight``, contains it; repeatable), ``--repeats N``,
``--no-brevitas``, ``--json PATH`` (default ``benchmarks/results/<date>-<mode>.json``),
``--threads N`` (default: the CPU count), ``--device cpu|cuda``, ``--retry-noisy N``,
``--cold-cache`` (compile into an empty Inductor cache), ``--in-process``, ``--list``.

Every case runs in a fresh Python process (as pyperf runs its benchmarks), so no case measures
what earlier ones left behind: on the 2-core VM the same attention module ran 10-30% slower (torch's
own fused SDPA included) after the other attention cases than in a fresh process, and the eval FP8
weight + input layer 1.8x instead of 1.25-1.46x after the other eval cases. ``--in-process`` runs
them all in this process (a process start costs a few seconds per case).
``QZOO_COMPILE=0`` benchmarks the eager kernels, ``QZOO_COMPILE=1`` compiles every kernel on its first
call; by default (the ``"auto"`` policy) every case is settled first: called until the background
compiler has compiled what the policy compiles (see ``timing.settle``).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from quantizers.compile import compile_enabled, compile_policy

from . import coldstart, export, fake_quant, hf_transformers, layers, training
from .brevitas_twins import brevitas_available, brevitas_version
from .cases import Case, Context
from .report import Row, markdown_tables, summary_line, write_json
from .runner import CaseResult, Settings, run_case

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIN_REPEATS = 7


def all_cases() -> List[Case]:
    """Every case, in report order."""
    return [*coldstart.cases(), *fake_quant.cases(), *layers.cases(), *training.cases(), *export.cases(), *hf_transformers.cases()]


def select(cases: List[Case], quick: bool, only: Optional[List[str]]) -> List[Case]:
    if only:
        return [case for case in cases if any(pattern in case.id for pattern in only)]
    return [case for case in cases if case.quick] if quick else cases


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="a subset of cases, fewer samples (about 5 minutes on 2 cores)")
    parser.add_argument("--only", action="append", metavar="SUBSTRING", help="run the cases whose id contains it")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 11, quick 7)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls after the first (default 3, quick 1)")
    parser.add_argument("--no-brevitas", action="store_true", help="skip the Brevitas contenders")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: CPU count)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--retry-noisy", type=int, default=None, help="re-runs of a case whose ratios are noisy (default 1, quick 0)")
    parser.add_argument("--cold-cache", action="store_true", help="compile into a fresh Inductor cache (true cold first calls)")
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    parser.add_argument("--in-process", action="store_true", help="run every case in this process, not each in a fresh one")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one case by exact id (a child process)
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < MIN_REPEATS:
        parser.error(f"--repeats must be at least {MIN_REPEATS} (medians need enough samples), got {args.repeats}")
    return args


def environment(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    return dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
        cpu=_cpu_model(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
        device=str(device), cuda_device=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        compile_enabled=compile_enabled(), compile_policy=compile_policy(), QZOO_COMPILE=os.environ.get("QZOO_COMPILE"),
        brevitas=brevitas_version() if not args.no_brevitas else None,
        git=_git_state(), argv=sys.argv[1:], quick=args.quick,
        inductor_cache=os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default (warm if compiled before)"),
        # glibc malloc returns large freed blocks to the OS; every call then page-faults its
        # activation-sized temporaries again (see README): record what tunes that.
        allocator_env={k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"},
    )


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_state() -> Dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", "quantizers", "qlayers"], cwd=root, capture_output=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    # The library is often benchmarked with uncommitted edits: the diff's hash tells runs apart.
    return {"commit": commit, "library_dirty": bool(diff), "library_diff_sha1": hashlib.sha1(diff).hexdigest() if diff else None}


def _run_with_retries(case: Case, ctx: Context, settings: Settings, retries: int) -> CaseResult:
    """``run_case``, re-run up to ``retries`` times while a targeted ratio is noisy (the least noisy run wins)."""
    result = run_case(case, ctx, settings)
    for _ in range(retries):
        if not any(row.noisy for row in result.rows if row.target is not None):
            break
        print(f"  {case.id}: noisy (IQR {result.worst_spread:.0%}), re-running", file=sys.stderr)
        again = run_case(case, ctx, settings)
        if again.worst_spread < result.worst_spread:
            result = again
    return result


_PARENT_ONLY = {"--only", "--json", "--cold-cache"}  # the child gets its own; a cold cache is the parent's, inherited


def _run_in_child(case: Case, argv: List[str]) -> Tuple[List[Row], Dict[str, Any], float, float]:
    """``case`` run by ``python -m benchmarks.run --case ID`` in a fresh process with this run's
    other options (its progress and warnings go to this process's stderr); its rows, case JSON,
    wall seconds and final load average. A child that fails (exit status, missing JSON, an error
    recorded in it) raises here."""
    forwarded: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _PARENT_ONLY:
            skip = "=" not in arg and name != "--cold-cache"
            continue
        forwarded.append(arg)
    with tempfile.TemporaryDirectory(prefix="qzoo-bench-case-") as folder:
        path = Path(folder) / "case.json"
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.run", "--case", case.id, "--json", str(path), *forwarded],
            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
        )
        if done.returncode != 0 or not path.exists():
            raise RuntimeError(f"the child process exited with status {done.returncode} (its output is above)")
        payload = json.loads(path.read_text())
    if payload["errors"]:
        raise RuntimeError(next(iter(payload["errors"].values())))
    case_json = payload["cases"][0]
    return [Row.from_json(r) for r in payload["rows"]], case_json, case_json["wall_s"], case_json["loadavg_after"][0]


def default_json_path(quick: bool) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = {"auto": "compiled", "on": "compiled-first-call", "off": "eager"}[compile_policy()]
    return RESULTS_DIR / f"{stamp}-{mode}{'-quick' if quick else ''}.json"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cases = [c for c in all_cases() if c.id == args.case] if args.case else select(all_cases(), args.quick, args.only)
    if args.list:
        print("\n".join(f"{case.id}{'  (quick)' if case.quick else ''}" for case in all_cases()))
        return 0
    if not cases:
        print(f"no case matches {args.only}; see --list", file=sys.stderr)
        return 2

    if args.cold_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="qzoo-bench-inductor-")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device(args.device)
    use_brevitas = not args.no_brevitas and brevitas_available()
    ctx = Context(device=device, quick=args.quick, brevitas=use_brevitas)
    settings = Settings(
        repeats=args.repeats or (MIN_REPEATS if args.quick else 11),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 3),
        min_sample_s=0.02 if args.quick else 0.05,
    )
    retries = args.retry_noisy if args.retry_noisy is not None else (0 if args.quick else 1)
    env = environment(args, device)
    env.update(repeats=settings.repeats, warmup=settings.warmup, min_sample_s=settings.min_sample_s,
               loadavg_start=os.getloadavg())
    print(
        f"qzoo benchmarks: torch {env['torch']}, {env['cpu_count']} CPUs, {env['torch_threads']} threads, "
        f"device {device}, compile {env['compile_policy']}, Brevitas "
        f"{env['brevitas'] or 'off'}, load {env['loadavg_start'][0]:.1f}; {len(cases)} cases",
        file=sys.stderr,
    )
    if env["torch_threads"] > 1 and env["loadavg_start"][0] > 0.5 * (env["cpu_count"] or 1):
        print(
            f"warning: load average {env['loadavg_start'][0]:.1f} on {env['cpu_count']} CPUs; with "
            f"{env['torch_threads']} torch threads every parallel region waits for descheduled threads, so "
            "small operations (eval rows) measure contention. Compare with --threads 1.",
            file=sys.stderr,
        )

    started = time.perf_counter()
    rows: List[Row] = []
    case_results: List[Dict[str, Any]] = []
    errors: Dict[str, str] = {}
    isolate = not args.in_process and not args.case and len(cases) > 1
    for index, case in enumerate(cases, 1):
        try:
            if isolate:
                case_rows, case_json, wall_s, load = _run_in_child(case, argv if argv is not None else sys.argv[1:])
            else:
                result = _run_with_retries(case, ctx, settings, retries)
                case_rows, case_json, wall_s, load = result.rows, result.to_json(), result.wall_s, result.load_after[0]
        except Exception as error:  # noqa: BLE001 - one broken case must not hide the others
            errors[case.id] = f"{type(error).__name__}: {error}".splitlines()[0]
            traceback.print_exc()
            print(f"[{index}/{len(cases)}] {case.id}: ERROR {errors[case.id]}", file=sys.stderr)
            continue
        rows += case_rows
        case_results.append(case_json)
        line = ", ".join(
            f"{row.name.split(',')[0]} {row.candidate_median:.2f} s" if row.unit == "s" else f"{row.baseline} {row.ratio:.3g}"
            for row in case_rows
        )
        print(f"[{index}/{len(cases)}] {case.id}: {line} ({wall_s:.1f}s, load {load:.1f})", file=sys.stderr)

    env.update(loadavg_end=os.getloadavg(), wall_s=time.perf_counter() - started)
    tables = markdown_tables(rows, errors)
    summary = summary_line(rows)
    print(tables)
    print(summary)
    print(
        f"\n{env['date']}: torch {env['torch']}, {env['cpu_count']} CPUs ({env['cpu']}), torch threads "
        f"{env['torch_threads']}, compile {env['compile_policy']}, "
        f"load average {env['loadavg_start'][0]:.1f} -> {env['loadavg_end'][0]:.1f}, {env['wall_s']:.0f}s"
    )
    path = args.json or default_json_path(args.quick)
    write_json(path, dict(
        environment=env, summary=summary, markdown=tables,
        rows=[row.to_json() for row in rows], cases=case_results, errors=errors,
    ))
    print(f"results: {path}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
