"""Binary minifloat formats: sign, exponent, mantissa, bias and a NaN/Inf policy."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from .base import NumberFormat
from .carrier import Carrier, carrier_for, exp2_int, floor_log2
from .rounding import round_to_integer

SPECIAL_POLICIES = ("ieee", "fn", "fnuz", "none")
"""How a :class:`FloatFormat` spends codes on NaN and Inf:

- ``"ieee"``: the top exponent holds ±Inf (mantissa 0) and NaNs (E5M2, float8_e4m3, float8_e3m4).
- ``"fn"``: finite; the top exponent holds numbers except mantissa-all-ones, which is NaN (E4M3FN).
- ``"fnuz"``: finite, one zero; the negative-zero code ``0b1000...`` is the only NaN (AMD/Graphcore).
- ``"none"``: every code is a number; no NaN, no Inf (FP6, FP4).
"""


@dataclass(frozen=True)
class FloatFormat(NumberFormat):
    """A floating-point format with ``exponent_bits`` / ``mantissa_bits`` / ``exponent_bias``.

    For a code with sign ``s``, exponent field ``f`` and mantissa field ``m``::

        value = (-1)^s * 2^(f - bias) * (1 + m / 2^M)      if f > 0   (normal)
        value = (-1)^s * 2^(1 - bias) * (m / 2^M)          if f == 0  (subnormal)

    with ``M = mantissa_bits``, and the codes reserved by ``special`` (see :data:`SPECIAL_POLICIES`).
    ``mantissa_bits=0`` gives power-of-two (logarithmic) formats such as E3M0. ``signed=False`` drops
    the sign bit (negative inputs round to 0).

    Example:
        >>> fmt = FloatFormat(exponent_bits=4, mantissa_bits=3, exponent_bias=7, special="fn")
        >>> fmt.max_value, fmt.min_normal, fmt.min_subnormal
        (448.0, 0.015625, 0.001953125)
        >>> fmt.quantize(torch.tensor([0.3, 1000.0])).tolist()
        [0.3125, 448.0]
    """

    rounding_saturates = True  # see NumberFormat.rounding_saturates

    exponent_bits: int
    mantissa_bits: int
    exponent_bias: Optional[int] = None
    special: str = "ieee"
    signed: bool = True
    saturating: bool = True
    label: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_int("exponent_bits", self.exponent_bits, 1, 15)
        _check_int("mantissa_bits", self.mantissa_bits, 0, 23)
        if self.exponent_bias is None:
            object.__setattr__(self, "exponent_bias", 2 ** (self.exponent_bits - 1) - 1)
        _check_int("exponent_bias", self.exponent_bias, -(2 ** 15), 2 ** 15)
        if self.special not in SPECIAL_POLICIES:
            raise ValueError(
                f"special={self.special!r} is not a NaN/Inf policy; allowed values: {', '.join(SPECIAL_POLICIES)}"
            )
        if not isinstance(self.signed, bool) or not isinstance(self.saturating, bool):
            raise TypeError("signed and saturating must be bool")
        if self.special == "fnuz" and not self.signed:
            raise ValueError('special="fnuz" puts NaN on the negative-zero code and needs signed=True')
        if self.bits > 16:
            raise ValueError(f"FloatFormat supports at most 16 bits per code; got {self.bits}")
        if not any(v != 0 and math.isfinite(v) for v in self.code_values):
            raise ValueError(
                f"FloatFormat(exponent_bits={self.exponent_bits}, mantissa_bits={self.mantissa_bits}, "
                f"special={self.special!r}) has no nonzero finite value; add exponent or mantissa bits "
                "or choose a special policy that spends fewer codes"
            )
        self._precompute()

    # ---- description -------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def default_saturating(self) -> bool:
        return self.saturating

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        sign = "" if self.signed else "u"
        return f"{sign}e{self.exponent_bits}m{self.mantissa_bits}(bias={self.exponent_bias}, {self.special})"

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal binade, ``1 - bias``."""
        return 1 - self.exponent_bias

    @property
    def max_exponent(self) -> int:
        """Exponent of the largest binade that holds a finite value."""
        top_field = 2 ** self.exponent_bits - 1
        if self.special == "ieee" or (self.special == "fn" and self.mantissa_bits == 0):
            top_field -= 1
        return top_field - self.exponent_bias

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.min_exponent)

    def _compute_code_values(self) -> Tuple[float, ...]:
        return tuple(self._value_of_code(code) for code in range(2 ** self.bits))

    def _value_of_code(self, code: int) -> float:
        m_bits, e_bits = self.mantissa_bits, self.exponent_bits
        mantissa = code & (2 ** m_bits - 1)
        field = (code >> m_bits) & (2 ** e_bits - 1)
        negative = self.signed and bool(code >> (e_bits + m_bits))
        top = field == 2 ** e_bits - 1
        if self.special == "ieee" and top:
            return math.nan if mantissa else (-math.inf if negative else math.inf)
        if self.special == "fn" and top and mantissa == 2 ** m_bits - 1:
            return math.nan
        if self.special == "fnuz" and negative and field == 0 and mantissa == 0:
            return math.nan
        if field == 0:
            magnitude = math.ldexp(mantissa, self.min_exponent - m_bits)
        else:
            magnitude = math.ldexp(2 ** m_bits + mantissa, field - self.exponent_bias - m_bits)
        return -magnitude if negative else magnitude

    def nan_code(self, negative: torch.Tensor) -> torch.Tensor:
        magnitude_bits = self.exponent_bits + self.mantissa_bits
        if self.special == "fnuz":
            return torch.full_like(negative, 1 << magnitude_bits, dtype=torch.int64)
        if self.special == "fn":
            quiet = 2 ** magnitude_bits - 1
        elif self.special == "ieee" and self.mantissa_bits > 0:
            quiet = (2 ** self.exponent_bits - 1) << self.mantissa_bits | 1 << (self.mantissa_bits - 1)
        else:
            return super().nan_code(negative)
        if not self.signed:
            return torch.full_like(negative, quiet, dtype=torch.int64)
        return torch.where(negative, quiet | 1 << magnitude_bits, quiet)

    # ---- kernel ------------------------------------------------------------------------------
    def _carrier(self, dtype: torch.dtype) -> Carrier:
        return carrier_for(dtype, self.min_exponent - self.mantissa_bits, self.max_exponent)

    def _round_in_carrier(
        self, x: torch.Tensor, carrier: Carrier, rounding: str, saturating: bool,
        noise: Optional[torch.Tensor],
    ) -> torch.Tensor:
        # Within binade [2^E, 2^(E+1)) (E clamped to the subnormal binade below) the grid step is
        # 2^(E - M): scale so the neighbours are consecutive integers, round, scale back; all exact.
        exponent = floor_log2(x.abs(), carrier).clamp(self.min_exponent, max(self.min_exponent, self.max_exponent))
        step_exponent = exponent - self.mantissa_bits
        scaled = x * exp2_int(-step_exponent, carrier)
        ties_up = scaled.abs() >= 1 if self.mantissa_bits == 0 else None
        y = round_to_integer(scaled, rounding, noise, ties_up) * exp2_int(step_exponent, carrier)
        single_zero = self.special == "fnuz" or not self.signed
        return finish_rounding(self, x, y, rounding, saturating, single_zero)


def finish_rounding(
    fmt: NumberFormat, x: torch.Tensor, y: torch.Tensor, rounding: str, saturating: bool, single_zero: bool
) -> torch.Tensor:
    """Apply ``fmt``'s overflow policy and sign rules to ``y``, the grid-rounded ``x``.

    Saturation clamps to ±max (±Inf included); otherwise see :func:`_overflow`. Unsigned formats
    clamp negatives to 0, and formats with a single zero turn -0 into +0.
    """
    max_value = fmt.max_value
    if saturating or not (fmt.has_inf or fmt.has_nan):
        y = y.clamp(-max_value, max_value)
    else:
        y = _overflow(y, x, max_value, fmt.has_inf, rounding)
    if not fmt.signed:
        return y.clamp_min(0.0).abs()  # +0, never -0: abs is not folded away by compilers
    if single_zero:
        y = y + 0.0  # -0 + 0 = +0 under round-to-nearest
    return y


def _overflow(y: torch.Tensor, x: torch.Tensor, max_value: float, has_inf: bool, rounding: str) -> torch.Tensor:
    """Non-saturating overflow: ±Inf (or NaN) beyond ±max, except that a finite input rounded toward
    zero (``"zero"``; ``"floor"`` for positives; ``"ceil"`` for negatives) stops at ±max, as IEEE 754
    directed rounding does."""
    special = math.inf if has_inf else math.nan
    finite = torch.isfinite(x)
    positive = torch.where(finite, max_value, special) if rounding in ("zero", "floor") else special
    negative = torch.where(finite, -max_value, -special) if rounding in ("zero", "ceil") else -special
    return torch.where(y > max_value, positive, torch.where(y < -max_value, negative, y))


def _check_int(argument: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{argument}={value} is out of range; allowed values: {low}..{high}")
