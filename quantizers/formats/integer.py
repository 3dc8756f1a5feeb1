"""Integer formats: two's complement ``intN`` and unsigned ``uintN``."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .base import _NARROW_DTYPES, NumberFormat, check_codes
from .carrier import FLOAT32, FLOAT64, Carrier
from .floating import _check_int
from .rounding import round_to_integer


@dataclass(frozen=True)
class IntFormat(NumberFormat):
    """``bits``-wide integers in ``[min_int, max_int]``.

    - signed: ``[-2^(bits-1), 2^(bits-1) - 1]``; ``narrow=True`` drops the most negative code, giving
      the symmetric ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``.
    - unsigned: ``[0, 2^bits - 1]`` (``narrow=True`` drops 0's partner at the top: ``2^bits - 2``).

    ``quantize`` rounds (``"even"`` is ``torch.round``) and clamps; integers have no Inf or NaN, so
    they always saturate, and NaN inputs stay NaN in ``quantize`` but cannot be encoded. Zero is
    ``-0.0`` for a negative input rounding to zero in signed formats, and always ``+0.0`` in unsigned
    ones (eager and compiled alike). Codes are the
    two's complement bit pattern in the low ``bits`` bits (``int4`` -1 is ``0b1111``).

    Example:
        >>> IntFormat(bits=4).quantize(torch.tensor([-9.0, 2.5, 3.5, 7.6])).tolist()
        [-8.0, 2.0, 4.0, 7.0]
    """

    rounding_saturates = True  # see NumberFormat.rounding_saturates

    bits: int = 8
    signed: bool = True
    narrow: bool = False

    def __post_init__(self) -> None:
        _check_int("bits", self.bits, 1, 32)
        if not isinstance(self.signed, bool) or not isinstance(self.narrow, bool):
            raise TypeError(f"signed and narrow must be bool, got signed={self.signed!r}, narrow={self.narrow!r}")
        if self.signed and self.bits < 2:
            raise ValueError("a signed IntFormat needs bits >= 2")
        for name in ("min_value", "max_value", "_code_mask", "dtype_limits"):
            getattr(self, name)  # computed now, never inside a compiled region

    @property
    def default_saturating(self) -> bool:
        return True

    @property
    def name(self) -> str:
        base = f"{'' if self.signed else 'u'}int{self.bits}"
        return base + ("_narrow" if self.narrow else "")

    @property
    def min_int(self) -> int:
        if self.signed:
            return -(2 ** (self.bits - 1)) + int(self.narrow)
        return 0

    @property
    def max_int(self) -> int:
        if self.signed:
            return 2 ** (self.bits - 1) - 1
        return 2 ** self.bits - 1 - int(self.narrow)

    # Kernels read these precomputed floats, never ``bits``: compiling one function for int16 and
    # then int32 makes ``bits`` a symbolic int (automatic dynamic), and 2^31 - 1 computed from it
    # overflowed in the generated code (every int32 element came out as -2^31).
    @functools.cached_property
    def max_value(self) -> float:
        return float(self.max_int)

    @functools.cached_property
    def min_value(self) -> float:
        return float(self.min_int)

    @functools.cached_property
    def _code_mask(self) -> int:
        return 2 ** self.bits - 1

    @property
    def min_subnormal(self) -> float:
        return 1.0

    def values(self, device: Optional[torch.device] = None) -> torch.Tensor:
        return torch.arange(self.min_int, self.max_int + 1, dtype=torch.float32, device=device)

    @property
    def code_values(self):  # type: ignore[override]
        raise NotImplementedError("IntFormat has no code table: use decode() or values()")

    @property
    def has_nan(self) -> bool:
        return False

    @property
    def has_inf(self) -> bool:
        return False

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.uint8 if self.bits <= 8 else torch.int64 if self.bits > 16 else torch.int32

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Two's complement (or unsigned) value of each code, as float32 (float64 above 24 bits)."""
        check_codes(codes, self)
        value = codes.to(torch.int64)
        if self.signed:
            value = torch.where(value >= 2 ** (self.bits - 1), value - 2 ** self.bits, value)
        return value.to(torch.float64 if self.bits > 24 else torch.float32)

    @functools.cached_property
    def dtype_limits(self) -> Dict[torch.dtype, Tuple[float, float]]:
        """``(min_int, max_int)`` rounded toward zero into float16, bfloat16 and float32 (every value
        of a float dtype at or above 2^mantissa is an integer, so these are the format's extreme
        values it holds)."""
        return {
            dtype: (_toward_zero(self.min_int, dtype), _toward_zero(self.max_int, dtype))
            for dtype in _NARROW_DTYPES
        }

    def _carrier(self, dtype: torch.dtype) -> Carrier:
        # float32 holds every integer up to 2^24 exactly; wider formats compute in float64.
        return FLOAT64 if dtype == torch.float64 or self.bits > 24 else FLOAT32

    def _round_in_carrier(
        self, x: torch.Tensor, carrier: Carrier, rounding: str, saturating: bool,
        noise: Optional[torch.Tensor],
    ) -> torch.Tensor:
        q = round_to_integer(x, rounding, noise).clamp(self.min_value, self.max_value)
        # Unsigned formats give +0 for -0 (and for negatives clamped to 0): ``abs`` keeps eager and
        # compiled kernels equal, where a clamp's choice between -0 and +0 differs.
        return q if self.signed else q.abs()

    def _codes_of(self, q: torch.Tensor, negative_nan: torch.Tensor) -> torch.Tensor:
        return q.to(torch.int64) & self._code_mask


def _toward_zero(value: int, dtype: torch.dtype) -> float:
    """The value of ``dtype`` nearest ``value`` in the direction of zero."""
    cast = torch.tensor(float(value), dtype=torch.float64).to(dtype)
    if abs(float(cast)) > abs(value):
        cast = torch.nextafter(cast, torch.zeros_like(cast))
    return float(cast)
