"""A short tour of qzoo's formats: value grids, quantizing a tensor, codes and packed FP4 bytes.

Run with ``python -m quantizers.demo``.
"""
from __future__ import annotations

import math
from typing import List

import torch

import quantizers as qz
from quantizers.formats.packing import pack_fp4

GRID_FORMATS = ("float4_e2m1fn", "float6_e2m3fn", "float4_e1m2")
SUMMARY_FORMATS = ("float8_e4m3fn", "hifloat8")
QUANTIZED_FORMATS = ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn", "hifloat8", "int4")


def _number(value: float) -> str:
    return f"{value:g}"


def _power_of_two(value: float) -> str:
    mantissa, exponent = math.frexp(value)
    return f"2^{exponent - 1}" if mantissa == 0.5 else _number(value)


def _row(label: str, items: List[str]) -> str:
    return f"  {label:<15}" + " ".join(f"{item:>8}" for item in items)


def _wrapped(values: List[float], per_line: int = 12) -> List[str]:
    words = [_number(v) for v in values]
    return ["    " + " ".join(words[i:i + per_line]) for i in range(0, len(words), per_line)]


def grid_lines() -> List[str]:
    lines = ["Value grids (non-negative finite values; every format is symmetric):"]
    for name in GRID_FORMATS:
        values = [v for v in qz.get_format(name).values().tolist() if v >= 0]
        lines.append(f"  {name}: {len(values)} values")
        lines.extend(_wrapped(values))
    lines.append("Positive finite values:")
    lines.append(f"  {'format':<15}{'count':>6}{'min subnormal':>15}{'min normal':>12}{'max':>8}")
    for name in SUMMARY_FORMATS:
        fmt = qz.get_format(name)
        count = int((fmt.values() > 0).sum())
        lines.append(
            f"  {name:<15}{count:>6}{_power_of_two(fmt.min_subnormal):>15}{_power_of_two(fmt.min_normal):>12}"
            f"{_number(fmt.max_value):>8}"
        )
    return lines


def quantize_lines(x: torch.Tensor) -> List[str]:
    lines = ["Quantizing a seeded random tensor (each format's default: round to nearest, saturating):"]
    lines.append(_row("input", [f"{v:.4f}" for v in x.tolist()]))
    for name in QUANTIZED_FORMATS:
        fmt = qz.get_format(name)
        lines.append(_row(name, [_number(v) for v in fmt.quantize(x).tolist()]))
        lines.append(_row("  codes", [f"0x{c:02X}" for c in fmt.encode(x).tolist()]))
    codes = qz.get_format("float4_e2m1fn").encode(x)
    packed = pack_fp4(codes)
    lines.append(
        f"float4_e2m1fn packed, two codes per byte (element 2i in the low nibble): "
        f"{len(codes)} codes -> {len(packed)} bytes"
    )
    lines.append("  " + " ".join(f"0x{b:02X}" for b in packed.tolist()))
    return lines


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(8) * 2
    print("\n".join(grid_lines() + [""] + quantize_lines(x)))


if __name__ == "__main__":
    main()
