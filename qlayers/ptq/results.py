"""The report a PTQ algorithm returns: one row per layer with its output error before and after."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class LayerResult:
    """One layer: ``error_before``/``error_after`` are the mean squared error of the layer's
    quantized output against its float output on the calibration sample (None where not
    measured); ``detail`` says what was chosen (a ratio, where a scale went)."""

    name: str
    error_before: Optional[float] = None
    error_after: Optional[float] = None
    detail: str = ""


@dataclass
class AlgorithmReport:
    """What :func:`qlayers.ptq.smoothquant` (and the other algorithms) did, per layer."""

    algorithm: str
    layers: List[LayerResult] = field(default_factory=list)
    options: Dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        lines = [f"{self.algorithm}({opts}): {len(self.layers)} layers", f"{'layer':40s} {'MSE before':>12s} {'MSE after':>12s}  detail"]
        for row in self.layers:
            lines.append(f"{row.name:40s} {_num(row.error_before):>12s} {_num(row.error_after):>12s}  {row.detail}")
        return "\n".join(lines)

    def __getitem__(self, name: str) -> LayerResult:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer {name!r} in the {self.algorithm} report; layers: {', '.join(r.name for r in self.layers)}")


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"
