"""What a PTQ run did, layer by layer: the output error before and after, and the time taken.

The output error of a layer is relative, over the calibration inputs it saw::

    error = sum ||y_quant(x) - y_float(x)||^2 / sum ||y_float(x)||^2

with ``y_float`` the layer's operation with its float weight and bias as they were before the
algorithm (no quantizer) and ``y_quant`` the quantized layer's forward. ``before`` is measured
just before the algorithm changes the layer, ``after`` just after.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Tuple


@dataclass(frozen=True)
class LayerReport:
    """One layer under one algorithm: relative output errors before and after, seconds spent."""

    name: str
    algorithm: str
    error_before: float
    error_after: float
    seconds: float
    note: str = ""

    @property
    def reduction(self) -> Optional[float]:
        """``1 - after / before`` (the fraction of the error removed), None when before is 0."""
        return None if self.error_before == 0 else 1.0 - self.error_after / self.error_before


@dataclass(frozen=True)
class PTQReport:
    """The rows of a PTQ run (one per layer and algorithm, in order) and the layers skipped with
    the reason. ``str(report)`` is a table; ``report[name]`` the rows of one layer."""

    rows: Tuple[LayerReport, ...] = ()
    skipped: Tuple[Tuple[str, str, str], ...] = field(default=())  # (algorithm, layer, reason)

    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> Tuple[LayerReport, ...]:
        rows = tuple(r for r in self.rows if r.name == name)
        if not rows:
            raise KeyError(f"no layer {name!r} in this report; layers: {', '.join(dict.fromkeys(r.name for r in self.rows))}")
        return rows

    def __add__(self, other: "PTQReport") -> "PTQReport":
        return PTQReport(self.rows + other.rows, self.skipped + other.skipped)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    def __str__(self) -> str:
        return format_table(self.rows, self.skipped)


def _reduction(row: LayerReport) -> str:
    value = row.reduction
    return "-" if value is None else f"{100 * value:+.1f}%"


def format_table(rows: Sequence[LayerReport], skipped: Sequence[Tuple[str, str, str]] = ()) -> str:
    """A fixed-width table: layer, algorithm, error before, after, change, seconds (and notes)."""
    header = ("layer", "algorithm", "error before", "error after", "removed", "seconds")
    lines = [header] + [
        (r.name, r.algorithm, f"{r.error_before:.4g}", f"{r.error_after:.4g}", _reduction(r), f"{r.seconds:.2f}")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text += [f"note: {r.name} ({r.algorithm}): {r.note}" for r in rows if r.note]
    text += [f"skipped: {layer} ({algorithm}): {reason}" for algorithm, layer, reason in skipped]
    return "\n".join(text)
