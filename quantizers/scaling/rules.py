"""Scale rules: from range statistics to ``(scale, zero_point)``.

Every rule is a pure tensor function of the statistics (``amax`` or ``min``/``max``, already shaped
to broadcast over the tensor) and returns the scale ``s`` and zero point ``z`` of the affine map

    x_hat = (Q((x / s) + z) - z) * s

where ``Q`` rounds to the element format. A statistic of 0 (an all-zero tensor, channel or group)
gives scale 1 for integer and float rules, so nothing divides by zero and the zeros stay exact. A
NaN or Inf statistic is never replaced: it gives a NaN or Inf scale, so the granule's output is NaN
(the NaN/Inf policy of :mod:`quantizers.scaling`; statistics of data are always finite).
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..formats import IntFormat, NumberFormat
from ..formats.carrier import FLOAT64, exp2_int, floor_log2

POWER_OF_TWO_ROUNDINGS = ("floor", "ceil", "round")


def _nonzero(stat: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale``, or 1 where the statistic is 0 (or negative); NaN statistics keep their NaN scale."""
    return torch.where((stat > 0) | torch.isnan(stat), scale, torch.ones_like(scale))


def _span_scale(low: torch.Tensor, high: torch.Tensor, levels: float) -> torch.Tensor:
    """``(high - low) / levels`` (1 for an empty range). A span beyond the dtype's range (bfloat16
    or float32 data near ±max at both ends) is computed as ``high / levels - low / levels`` instead
    of overflowing to Inf."""
    span = high - low
    scale = torch.where(torch.isinf(span), high / levels - low / levels, span / levels)
    return _nonzero(span, scale)


FULL_RANGE_DIVISORS = ("half_range", "min_int")


def int_symmetric_scale(
    amax: torch.Tensor, fmt: IntFormat, full_range_divisor: str = "half_range"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric integer scale, zero point 0.

    - narrow (``[-(2^(b-1)-1), 2^(b-1)-1]``, Brevitas ``Int8WeightPerTensorFloat``):
      ``s = amax / (2^(b-1) - 1)``.
    - full range (``[-2^(b-1), 2^(b-1)-1]``), by ``full_range_divisor``:
      ``"half_range"`` (coreai_opt "symmetric", MQBench): ``s = amax / ((max_int - min_int) / 2)
      = amax / (2^(b-1) - 0.5)``, which spreads the range over the half-open ``[-128, 127]``
      evenly; ``"min_int"`` (Brevitas's ``IntScaling``, e.g. ``Int8ActPerTensorFloat``):
      ``s = amax / -min_int = amax / 2^(b-1)``, so ``+amax`` clips to ``max_int`` and ``-amax``
      maps to ``min_int`` exactly.
    - unsigned formats: ``s = amax / max_int``.
    """
    if full_range_divisor not in FULL_RANGE_DIVISORS:
        raise ValueError(
            f"full_range_divisor={full_range_divisor!r} is unknown; allowed values: {', '.join(FULL_RANGE_DIVISORS)}"
        )
    if not fmt.signed or fmt.narrow:
        levels = float(fmt.max_int)
    elif full_range_divisor == "min_int":
        levels = float(-fmt.min_int)
    else:
        levels = fmt.max_int + 0.5
    return _nonzero(amax, amax / levels), torch.zeros_like(amax)


def int_asymmetric_scale(
    min_value: torch.Tensor, max_value: torch.Tensor, fmt: IntFormat
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric integer scale with an integer zero point (the "ZP" formulation).

    The range is widened to hold 0 (``min <= 0 <= max``) so zero is exact; then
    ``s = (max - min) / (max_int - min_int)`` and ``z = clamp(round(min_int - min / s), min_int, max_int)``.
    """
    low, high = min_value.clamp_max(0), max_value.clamp_min(0)
    scale = _span_scale(low, high, float(fmt.max_int - fmt.min_int))
    zero_point = torch.round(fmt.min_int - low / scale).clamp(fmt.min_int, fmt.max_int)
    return scale, zero_point


def int_minval_scale(
    min_value: torch.Tensor, max_value: torch.Tensor, fmt: IntFormat
) -> Tuple[torch.Tensor, torch.Tensor]:
    """coreai_opt's MINVAL formulation: ``(scale, offset)`` for ``x_hat = (q - min_int) * s + min``
    with ``s`` as in :func:`int_asymmetric_scale` and ``offset = min`` (widened to hold 0). The
    minimum is exactly representable instead of zero; nothing is rounded to an integer zero point.
    """
    low, high = min_value.clamp_max(0), max_value.clamp_min(0)
    scale = _span_scale(low, high, float(fmt.max_int - fmt.min_int))
    return scale, low


def float_scale(amax: torch.Tensor, fmt: NumberFormat) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scale that maps ``amax`` onto the format's largest value: ``s = amax / fmt.max_value``."""
    return _nonzero(amax, amax / fmt.max_value), torch.zeros_like(amax)


def power_of_two(scale: torch.Tensor, rounding: str = "floor") -> torch.Tensor:
    """Restrict a positive scale to a power of two: ``2^floor(log2 s)``, ``2^ceil(log2 s)`` or
    ``2^round(log2 s)`` (ties, ``s = sqrt(2) * 2^k``, go up).

    ``"floor"`` makes the grid finer (the largest values may saturate); ``"ceil"`` never saturates.
    Brevitas's FixedPoint quantizers and sophgo-mq's ``pot_scale`` use this restriction. Exponents
    are read from the float's bits, so exact powers of two are kept and no ``log2`` rounding can
    pick the wrong binade. NaN and Inf scales stay NaN and Inf.
    """
    if rounding not in POWER_OF_TWO_ROUNDINGS:
        raise ValueError(
            f"power-of-two rounding={rounding!r} is unknown; allowed values: {', '.join(POWER_OF_TWO_ROUNDINGS)}"
        )
    wide = scale.to(torch.float64)
    exponent = floor_log2(wide, FLOAT64)
    significand = wide * exp2_int(-exponent, FLOAT64)  # in [1, 2)
    if rounding == "ceil":
        exponent = exponent + (significand > 1).to(exponent.dtype)
    elif rounding == "round":
        exponent = exponent + (significand * significand >= 2).to(exponent.dtype)
    restricted = exp2_int(exponent, FLOAT64).to(scale.dtype)
    return torch.where(torch.isfinite(scale), restricted, scale)
