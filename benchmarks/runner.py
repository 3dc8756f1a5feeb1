"""Running one case: build its contenders, time or measure them, and turn the numbers into rows."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import coldstart
from .cases import BREVITAS, Case, Context
from .memory import measure_peak
from .report import Row
from .timing import Timing, device_sync, first_call, paired_ratios, relative_spread, settle, time_interleaved

logger = logging.getLogger(__name__)
MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    repeats: int
    warmup: int
    min_sample_s: float


@dataclass
class CaseResult:
    case: Case
    rows: List[Row] = field(default_factory=list)
    contenders: Dict[str, Any] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)  # label -> why
    wall_s: float = 0.0
    settle_s: float = 0.0  # calls until the compile policy settled (timing.settle)
    load_before: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def worst_spread(self) -> float:
        return max((row.spread for row in self.rows if row.target is not None), default=0.0)

    def to_json(self) -> Dict[str, Any]:
        return dict(
            case=self.case.id, kind=self.case.kind, meta=self.case.meta, contenders=self.contenders,
            skipped=self.skipped, wall_s=self.wall_s, settle_s=self.settle_s, loadavg_before=self.load_before, loadavg_after=self.load_after,
            rows=[row.to_json() for row in self.rows],
        )


def run_case(case: Case, ctx: Context, settings: Settings) -> CaseResult:
    """Build and run ``case``; contenders other than the candidate that fail are skipped (noted)."""
    result = CaseResult(case, load_before=os.getloadavg())
    start = time.perf_counter()
    contenders = case.build(ctx)
    if not ctx.brevitas:
        contenders = {k: v for k, v in contenders.items() if not k.startswith(BREVITAS)}
    if case.kind == "memory":
        _run_memory(case, ctx, contenders, result)
    elif case.kind == "cold":
        _run_cold(case, ctx, contenders, result)
    else:
        _run_timing(case, ctx, settings, contenders, result)
    result.wall_s = time.perf_counter() - start
    result.load_after = os.getloadavg()
    return result


def _run_timing(case: Case, ctx: Context, settings: Settings, fns: Dict[str, Any], result: CaseResult) -> None:
    sync = device_sync(ctx.device)
    firsts: Dict[str, Tuple[float, int]] = {}
    for label in list(fns):
        try:
            firsts[label] = first_call(fns[label], sync)
        except Exception as error:  # noqa: BLE001 - a broken contender is reported, not fatal
            if label == case.candidate:
                raise
            result.skipped[label] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            logger.warning("%s: %s skipped (%s)", case.id, label, result.skipped[label])
            del fns[label]
    result.settle_s = settle(fns[case.candidate], sync)
    timings = time_interleaved(fns, settings.repeats, settings.warmup, settings.min_sample_s, sync, firsts)
    result.contenders = {label: timing.to_json() for label, timing in timings.items()}
    candidate = timings[case.candidate]
    for compare in case.compares:
        baseline = timings.get(compare.baseline)
        if baseline is None:
            continue
        result.rows.append(_timing_row(case, compare.baseline, compare.target, candidate, baseline))


def _timing_row(case: Case, baseline_label: str, target: Optional[float], candidate: Timing, baseline: Timing) -> Row:
    ratio = candidate.median_ms / baseline.median_ms
    return Row(
        case=case.id, section=case.section, name=case.name, baseline=baseline_label, unit="ms",
        candidate_median=candidate.median_ms, candidate_min=candidate.min_ms,
        baseline_median=baseline.median_ms, baseline_min=baseline.min_ms,
        ratio=ratio, ratio_min=candidate.min_ms / baseline.min_ms,
        target=target, passed=None if target is None else ratio <= target,
        first_call_ms=candidate.first_call_ms, graphs_compiled_timed=candidate.graphs_timed,
        spread=relative_spread(paired_ratios(candidate, baseline)),
    )


def _run_cold(case: Case, ctx: Context, fns: Dict[str, Any], result: CaseResult) -> None:
    """Fresh processes (see ``coldstart.py``): one row per measured figure, in seconds; the ratio
    is the median over the target."""
    runs = coldstart.repeat(fns[case.candidate], 3 if ctx.quick else coldstart.MAX_PROCESSES)
    summary = coldstart.summarize(runs)
    result.contenders = {case.candidate: summary}
    for metric, (name, target) in coldstart.METRICS.items():
        median, minimum = summary[metric]["median"], summary[metric]["min"]
        result.rows.append(Row(
            case=case.id, section=case.section, name=name, baseline="target" if target else "-", unit="s",
            candidate_median=median, candidate_min=minimum,
            baseline_median=target or float("nan"), baseline_min=target or float("nan"),
            ratio=median / target if target else float("nan"), ratio_min=minimum / target if target else float("nan"),
            target=1.0 if target else None, passed=None if target is None else median <= target,
        ))


def _run_memory(case: Case, ctx: Context, probes: Dict[str, Any], result: CaseResult) -> None:
    candidate_probe = probes[case.candidate]
    result.settle_s = settle(lambda: (candidate_probe.reset(), candidate_probe.step()))
    peaks = {label: measure_peak(probe, ctx.device) for label, probe in probes.items()}
    result.contenders = peaks
    candidate = peaks[case.candidate]
    for compare in case.compares:
        baseline = peaks.get(compare.baseline)
        if baseline is None:
            continue
        ratio = candidate["peak"] / baseline["peak"]
        transient = candidate["transient"] / max(baseline["transient"], 1)
        result.rows.append(Row(
            case=case.id, section=case.section, name=case.name, baseline=compare.baseline, unit="MiB",
            candidate_median=candidate["peak"] / MIB, candidate_min=candidate["peak"] / MIB,
            baseline_median=baseline["peak"] / MIB, baseline_min=baseline["peak"] / MIB,
            ratio=ratio, ratio_min=ratio, target=compare.target, passed=None if compare.target is None else ratio <= compare.target,
            notes=[
                f"resident {candidate['resident'] / MIB:.2f} vs {baseline['resident'] / MIB:.2f} MiB, "
                f"step allocations {candidate['transient'] / MIB:.2f} vs {baseline['transient'] / MIB:.2f} MiB "
                f"(x{transient:.2f})"
            ],
        ))
