"""Rows of results, the Markdown tables printed at the end of a run, and the JSON file."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

NOISY_SPREAD = 0.15  # interquartile range of the paired ratios, relative to their median

SECTION_TITLES = {
    "cold_start": "0. First calls in a fresh process, empty inductor cache (seconds)",
    "fake_quant": "1. Fake quantization of a 4096x4096 float32 weight (time per call)",
    "eval_linear": "2a. Eval-mode forward, Linear 1024->1024, batch 64 (time per call)",
    "eval_conv": "2b. Eval-mode forward, Conv2d 64->64 3x3, input 8x64x32x32 (time per call)",
    "train_linear": "3. Training step (forward + backward), Linear 1024->1024, batch 64 (time per step)",
    "memory": "4. Peak live tensor memory of a training step, Linear 1024->1024, batch 64",
}


@dataclass
class Row:
    """One comparison: the candidate (qzoo) against one baseline, ``ratio = candidate / baseline``."""

    case: str
    section: str
    name: str
    baseline: str
    unit: str
    candidate_median: float
    candidate_min: float
    baseline_median: float
    baseline_min: float
    ratio: float
    ratio_min: float
    target: Optional[float]
    passed: Optional[bool]
    first_call_ms: Optional[float] = None
    graphs_compiled_timed: int = 0
    spread: float = 0.0
    notes: List[str] = field(default_factory=list)

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD

    def to_json(self) -> Dict[str, Any]:
        return dict(asdict(self), noisy=self.noisy)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Row":
        """The row :meth:`to_json` wrote (``noisy`` is derived, so dropped)."""
        return cls(**{k: v for k, v in data.items() if k != "noisy"})


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _ratio(row: Row) -> str:
    text = f"{row.ratio:.3f}" if row.ratio < 0.1 else f"{row.ratio:.2f}"
    if row.baseline == "brevitas" and row.ratio > 0:
        text += f" ({1 / row.ratio:.0f}x faster)" if row.ratio < 1 else f" ({row.ratio:.1f}x slower)"
    return text


def _target(row: Row) -> str:
    if row.target is None:
        return "-"
    if row.target < 1:
        return f"<= {row.target:g} (>= {1 / row.target:g}x faster)"
    return f"<= {row.target:g}"


def _result(row: Row) -> str:
    if row.passed is None:
        return "info"
    return "PASS" if row.passed else "**FAIL**"


def _notes(row: Row) -> str:
    notes = list(row.notes)
    if row.noisy:
        notes.append(f"noisy (IQR {row.spread:.0%})")
    if row.graphs_compiled_timed:
        notes.append(f"{row.graphs_compiled_timed} graph(s) compiled while timed")
    return "; ".join(notes)


def markdown_tables(rows: List[Row], errors: Dict[str, str]) -> str:
    """One Markdown table per section, in suite order, then the cases that failed to run."""
    out: List[str] = []
    sections = list(dict.fromkeys(row.section for row in rows))
    for section in sections:
        section_rows = [row for row in rows if row.section == section]
        unit = section_rows[0].unit
        out.append(f"### {SECTION_TITLES.get(section, section)}\n")
        if unit == "s":
            out.append("| measure | median s | min s | target | result |")
            out.append("| --- | ---: | ---: | --- | --- |")
            for row in section_rows:
                target = "-" if row.target is None else f"<= {row.baseline_median:g} s"
                out.append(
                    f"| {row.name} | {row.candidate_median:.2f} | {row.candidate_min:.2f} | {target} | {_result(row)} |"
                )
        elif unit == "MiB":
            out.append("| case | baseline | qzoo MiB | baseline MiB | ratio | target | result | notes |")
            out.append("| --- | --- | ---: | ---: | ---: | --- | --- | --- |")
            for row in section_rows:
                out.append(
                    f"| {row.name} | {row.baseline} | {row.candidate_median:.2f} | {row.baseline_median:.2f} "
                    f"| {_ratio(row)} | {_target(row)} | {_result(row)} | {_notes(row)} |"
                )
        else:
            out.append(
                "| case | baseline | qzoo median ms | qzoo min ms | baseline median ms | baseline min ms "
                "| ratio | ratio of mins | target | result | qzoo first call ms | notes |"
            )
            out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |")
            for row in section_rows:
                out.append(
                    f"| {row.name} | {row.baseline} | {_ms(row.candidate_median)} | {_ms(row.candidate_min)} "
                    f"| {_ms(row.baseline_median)} | {_ms(row.baseline_min)} | {_ratio(row)} | {row.ratio_min:.2f} | {_target(row)} "
                    f"| {_result(row)} | {_ms(row.first_call_ms)} | {_notes(row)} |"
                )
        out.append("")
    if errors:
        out.append("### Cases that did not run\n")
        for case, message in errors.items():
            out.append(f"- `{case}`: {message}")
        out.append("")
    return "\n".join(out)


def summary_line(rows: List[Row]) -> str:
    judged = [row for row in rows if row.passed is not None]
    failed = [row for row in judged if not row.passed]
    text = f"{len(judged) - len(failed)}/{len(judged)} targets met"
    if failed:
        text += "; missed: " + ", ".join(f"{row.case} vs {row.baseline}" for row in failed)
    return text


def write_json(path: Path, payload: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)
