"""Exact power-of-two arithmetic on the bits of the float that carries a computation.

Format kernels compute in a *carrier* dtype: float32 for float16/bfloat16/float32 inputs (all exactly
representable in float32), float64 for float64 inputs or formats whose range float32 cannot hold.
Exponents are read from and powers of two written into the IEEE bit fields directly, which is exact
and cheaper than ``log2``/``exp2``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype quantization arithmetic (statistics, scales, ``x / s``, ``q * s``) runs in for
    inputs of ``dtype``: float64 for float64, float32 for everything else (float16 and bfloat16
    values are exact in float32, and float32 holds scales such as 2^-127 that they cannot)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def widen(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :func:`compute_dtype` (exact: a widening cast); float32/float64 tensors unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else widen_to(x, compute_dtype(x.dtype))


def widen_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)`` for a ``dtype`` at least as wide, keeping every bit of the value: a float16
    -NaN stays negative (torch's CPU float16 -> float32 conversion drops the sign of NaN in its
    scalar path, so whether it survives would depend on the tensor's size)."""
    wide = x.to(dtype)
    if x.dtype != torch.float16 or dtype == torch.float16:
        return wide
    int_dtype = torch.int32 if dtype == torch.float32 else torch.int64
    negative_nan = torch.isnan(wide) & (x.view(torch.int16) < 0)
    return torch.where(negative_nan, (wide.view(int_dtype) | torch.iinfo(int_dtype).min).view(dtype), wide)


@dataclass(frozen=True)
class Carrier:
    """An IEEE binary float dtype and its integer twin of the same width."""

    dtype: torch.dtype
    int_dtype: torch.dtype
    mantissa_bits: int
    exponent_bias: int

    @property
    def min_normal_exponent(self) -> int:
        return 1 - self.exponent_bias

    @property
    def max_exponent(self) -> int:
        return self.exponent_bias


FLOAT32 = Carrier(torch.float32, torch.int32, 23, 127)
FLOAT64 = Carrier(torch.float64, torch.int64, 52, 1023)


def carrier_for(dtype: torch.dtype, exponent_low: int, exponent_high: int) -> Carrier:
    """The carrier for inputs of ``dtype`` on a grid whose quanta span 2^exponent_low..2^exponent_high.

    float32 is used unless the input is float64 or the grid needs powers of two that are not normal
    float32 numbers (then ``2^-k`` would not be exact).
    """
    fits_float32 = (
        FLOAT32.min_normal_exponent <= exponent_low
        and exponent_high <= FLOAT32.max_exponent
        and -exponent_low <= FLOAT32.max_exponent
    )
    if dtype == torch.float64 or not fits_float32:
        return FLOAT64
    return FLOAT32


def sign_bit(x: torch.Tensor) -> torch.Tensor:
    """``torch.signbit(x)`` read from the bits, so a float16/bfloat16 -NaN counts as negative
    (torch's CPU float16 -> float32 conversion drops the sign of NaN)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.view(torch.int16) < 0
    return torch.signbit(x)


def narrow_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)`` for a ``dtype`` at most as wide, keeping the sign of NaN: compiled kernels
    convert float32 to bfloat16 with c10's scalar routine in the tail of a vector loop, which
    writes every NaN as +NaN (0x7FC0), where eager conversion keeps the sign. Costs bfloat16
    outputs one select; other dtypes convert directly."""
    narrow = x.to(dtype)
    if dtype != torch.bfloat16 or x.dtype == dtype:
        return narrow
    # Selected as int16 bits: a bfloat16 select would be computed in float32 and converted again.
    bits = narrow.view(torch.int16)
    return torch.where(torch.isnan(x) & torch.signbit(x), bits | -(2 ** 15), bits).view(dtype)


def check_float_input(x: torch.Tensor, argument: str = "x") -> None:
    """Raise ``TypeError`` unless ``x`` is a floating-point tensor of a supported dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_INPUT_DTYPES:
        allowed = ", ".join(str(d) for d in FLOAT_INPUT_DTYPES)
        raise TypeError(f"{argument} has dtype {x.dtype}; allowed dtypes: {allowed}")


def floor_log2(magnitude: torch.Tensor, carrier: Carrier) -> torch.Tensor:
    """``floor(log2(m))`` for normal carrier numbers, read from the exponent field.

    Zeros and carrier subnormals give ``-bias`` (callers clamp to their own minimum exponent);
    Inf and NaN give ``bias + 1``.
    """
    bits = magnitude.view(carrier.int_dtype)
    field = (bits >> carrier.mantissa_bits) & (2 * carrier.exponent_bias + 1)
    return field - carrier.exponent_bias


def exp2_int(exponent: torch.Tensor, carrier: Carrier) -> torch.Tensor:
    """``2^exponent`` for an integer tensor within the carrier's normal exponent range, exactly."""
    field = (exponent + carrier.exponent_bias).to(carrier.int_dtype)
    return (field << carrier.mantissa_bits).view(carrier.dtype)
