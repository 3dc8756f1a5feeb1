"""HiFloat8 (HiF8): Huawei Ascend's tapered-precision 8-bit float.

Code layout: sign bit, a prefix-coded *dot* field giving the exponent width ``D``, the exponent in
sign-magnitude with an implicit leading 1 on the magnitude, then the mantissa::

    dot  | D | exponent E              | mantissa bits
    11   | 4 | ±(8..15)                | 1
    10   | 3 | ±(4..7)                 | 2
    01   | 2 | ±(2..3)                 | 3
    001  | 1 | ±1                      | 3
    0001 | 0 | 0                       | 3
    0000 | denormal: mantissa M=1..7 is 2^(M-23); M=0 is zero (0x00) or NaN (0x80)

Normal value ``(-1)^s * 2^E * (1 + mantissa / 2^bits)``. ``E=15`` with mantissa 1 is ±Inf
(0x6F / 0xEF), so the largest finite value is ``2^15 = 32768``. There are 126 positive finite values
from ``2^-22`` to ``2^15``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .base import ByteFormat
from .carrier import Carrier, carrier_for, exp2_int, floor_log2
from .floating import finish_rounding
from .rounding import round_to_integer

HIF8_MAX_EXPONENT = 15
HIF8_MIN_NORMAL_EXPONENT = -15
HIF8_MIN_EXPONENT = -22
_PREFIXES = ((0b11, 2, 4), (0b10, 2, 3), (0b01, 2, 2), (0b001, 3, 1), (0b0001, 4, 0))


@dataclass(frozen=True)
class HiFloat8(ByteFormat):
    """HiFloat8 (HiF8): 8-bit tapered float, values from 2^-22 to 32768 with 3 mantissa bits near 1 and
    fewer towards both ends, with a choice of overflow policy.

    Rounding defaults to ``"away"`` (ties away from zero, the HiF8 specification's rounding). Overflow:
    ``saturating=True`` (default, as Ascend's cast) clamps to ±32768; ``saturating=False`` follows the
    reference emulation, where ``|x| >= 1.25 * 2^15`` becomes ±Inf under ties-away rounding.
    In the denormal binades (no mantissa bit) ``"even"`` rounds ties up, as for E8M0.

    Example:
        >>> HiFloat8().quantize(torch.tensor([1.0625, 20.0, 1e6])).tolist()
        [1.125, 20.0, 32768.0]
    """

    rounding_saturates = True  # see NumberFormat.rounding_saturates

    default_rounding = "away"

    @property
    def signed(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return "hifloat8"

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, HIF8_MIN_NORMAL_EXPONENT)

    def _compute_code_values(self) -> Tuple[float, ...]:
        return tuple(_hif8_value(code) for code in range(256))

    def nan_code(self, negative: torch.Tensor) -> torch.Tensor:
        return torch.full_like(negative, 0x80, dtype=torch.int64)

    def _carrier(self, dtype: torch.dtype) -> Carrier:
        return carrier_for(dtype, HIF8_MIN_EXPONENT, HIF8_MAX_EXPONENT)

    def _round_in_carrier(
        self, x: torch.Tensor, carrier: Carrier, rounding: str, saturating: bool,
        noise: Optional[torch.Tensor],
    ) -> torch.Tensor:
        exponent = floor_log2(x.abs(), carrier).clamp(HIF8_MIN_EXPONENT, HIF8_MAX_EXPONENT)
        mantissa_bits = hif8_mantissa_bits(exponent)
        step_exponent = exponent - mantissa_bits
        scaled = x * exp2_int(-step_exponent, carrier)
        ties_up = (mantissa_bits == 0) & (scaled.abs() >= 1)
        y = round_to_integer(scaled, rounding, noise, ties_up) * exp2_int(step_exponent, carrier)
        return finish_rounding(self, x, y, rounding, saturating, single_zero=True)


def hif8_mantissa_bits(exponent: torch.Tensor) -> torch.Tensor:
    """Mantissa width of the HiF8 binade ``[2^E, 2^(E+1))``: 3 for |E| <= 3, 2 for |E| <= 7,
    1 for |E| <= 15, 0 in the denormal binades below ``2^-15``."""
    magnitude = exponent.abs()
    return torch.where(
        magnitude <= 3, 3, torch.where(magnitude <= 7, 2, torch.where(exponent >= HIF8_MIN_NORMAL_EXPONENT, 1, 0))
    ).to(exponent.dtype)


def _hif8_value(code: int) -> float:
    negative = bool(code & 0x80)
    rest = code & 0x7F
    for prefix, prefix_bits, exponent_width in _PREFIXES:
        if rest >> (7 - prefix_bits) == prefix:
            break
    else:  # dot 0000: denormal
        mantissa = rest & 0b111
        if mantissa == 0:
            return math.nan if negative else 0.0
        magnitude = math.ldexp(1.0, mantissa - 23)
        return -magnitude if negative else magnitude
    mantissa_bits = 7 - prefix_bits - exponent_width
    mantissa = rest & (2 ** mantissa_bits - 1)
    exponent = 0
    if exponent_width:
        field = (rest >> mantissa_bits) & (2 ** exponent_width - 1)
        exponent_negative = field >> (exponent_width - 1)
        exponent = 2 ** (exponent_width - 1) + (field & (2 ** (exponent_width - 1) - 1))
        exponent = -exponent if exponent_negative else exponent
    if exponent == HIF8_MAX_EXPONENT and mantissa == 1:
        return -math.inf if negative else math.inf
    magnitude = math.ldexp(2 ** mantissa_bits + mantissa, exponent - mantissa_bits)
    return -magnitude if negative else magnitude
