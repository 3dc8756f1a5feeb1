"""E8M0: the unsigned power-of-two format of OCP MX shared scales (``float8_e8m0fnu``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .base import ByteFormat
from .carrier import FLOAT64, Carrier, exp2_int, floor_log2
from .rounding import round_to_integer

E8M0_BIAS = 127


@dataclass(frozen=True)
class E8M0(ByteFormat):
    """OCP MX scale format: code ``c`` in 0..254 is ``2^(c - 127)``, code 255 is NaN.

    No sign, no zero, no Inf. Rounding happens in the linear domain between neighbouring powers of
    two; ``"even"`` rounds ties (``1.5 * 2^k``) up, as ``ml_dtypes`` and ``torch`` do, because both
    neighbours have the significand 1. Inputs below ``2^-127`` round to ``2^-127``. In the lowest
    binade ``(2^-127, 2^-126)`` both ``ml_dtypes`` and ``torch`` round every value up to ``2^-126``;
    ``"even"`` reproduces that bit for bit so results agree with both, the other modes keep their
    plain definition. Zero and negative
    inputs have no code: they give NaN unless ``saturating`` (the default), where 0 gives ``2^-127``.
    Overflow beyond ``2^127`` saturates or gives NaN.

    Example:
        >>> E8M0().encode(torch.tensor([1.0, 0.25, 3.0])).tolist()
        [127, 125, 129]
    """


    @property
    def signed(self) -> bool:
        return False

    @property
    def name(self) -> str:
        return "float8_e8m0fnu"

    def _compute_code_values(self) -> Tuple[float, ...]:
        return tuple(math.ldexp(1.0, code - E8M0_BIAS) for code in range(255)) + (math.nan,)

    def nan_code(self, negative: torch.Tensor) -> torch.Tensor:
        return torch.full_like(negative, 255, dtype=torch.int64)

    def _carrier(self, dtype: torch.dtype) -> Carrier:
        return FLOAT64  # 2^-127 is not a normal float32

    def _round_in_carrier(
        self, x: torch.Tensor, carrier: Carrier, rounding: str, saturating: bool,
        noise: Optional[torch.Tensor],
    ) -> torch.Tensor:
        exponent = floor_log2(x.abs(), carrier).clamp(-E8M0_BIAS, E8M0_BIAS)
        scaled = x * exp2_int(-exponent, carrier)
        rounded = round_to_integer(scaled, rounding, noise, scaled.abs() >= 1)
        y = rounded * exp2_int(exponent, carrier)
        smallest, largest = math.ldexp(1.0, -E8M0_BIAS), math.ldexp(1.0, E8M0_BIAS)
        y = torch.where((x > 0) & (y < smallest), smallest, y)  # no zero: tiny positives stop at 2^-127
        if rounding == "even":  # the oracles' rule for the lowest binade, see the class docstring
            y = torch.where((x > smallest) & (x < 2 * smallest), 2 * smallest, y)
        if saturating:
            y = torch.where(x == 0, smallest, y.clamp_max(largest))
        else:
            y = torch.where(y > largest, math.nan, y)
        return torch.where((y <= 0) | (x < 0), math.nan, y)
