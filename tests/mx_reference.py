"""An independent OCP MX reference, written from the spec (OCP MX v1.0 §5-6) for the tests.

Nothing here imports qzoo. Exponents come from Python's ``math.frexp`` and exact ``Fraction``
arithmetic, element casts from ``ml_dtypes`` (round-to-nearest-even), after an explicit clip to
``±max`` in float64 because ml_dtypes' casts do not saturate.

The rule, per block of 32 consecutive elements along ``axis`` (zero-padded at the end)::

    amax = max |V_i|
    e    = floor(log2 amax) - emax_elem            # "floor": the spec's rule
    e    = clamp(e, -127, 127); amax == 0 -> -127; amax NaN or Inf -> NaN scale
    X    = 2^e                                     # an E8M0 value
    P_i  = RNE(clip(V_i / X, -max_elem, max_elem))  # element format, saturating
    value_i = P_i * X

and the variants defined in ``notes/mx_scale_rules.md`` (torchao's ScaleCalculationMode):

- ``"ceil"``:  ``e = ceil(log2 amax) - emax_elem``;
- ``"even"``:  ``amax`` is first rounded half-up to the element's mantissa width (on its float32
  bits: a carry moves into the exponent), then ``floor``;
- ``"rceil"``: ``e = ceil(log2(amax / max_elem))`` (the smallest power of two that puts amax on or
  under ``max_elem``; NVIDIA's ``cvt.rp.ue8m0``).

MXINT8 elements are ``k / 64`` with integer ``|k| <= 127`` (emax_elem 0, max 127/64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Tuple

import ml_dtypes
import numpy as np

BLOCK_SIZE = 32
E8M0_MIN, E8M0_MAX = -127, 127
MODES = ("floor", "ceil", "even", "rceil")


@dataclass(frozen=True)
class Element:
    """An MX element format: ``emax`` = exponent of its largest normal, ``max`` its largest value,
    ``mantissa_bits`` its explicit mantissa (fraction) bits, ``dtype`` the ml_dtypes type (None for
    MXINT8)."""

    name: str
    emax: int
    max: float
    mantissa_bits: int
    dtype: object


# From the spec's element tables (OCP MX v1.0 §5.3).
ELEMENTS = {
    "float8_e4m3fn": Element("float8_e4m3fn", 8, 448.0, 3, ml_dtypes.float8_e4m3fn),
    "float8_e5m2": Element("float8_e5m2", 15, 57344.0, 2, ml_dtypes.float8_e5m2),
    "float6_e2m3fn": Element("float6_e2m3fn", 2, 7.5, 3, ml_dtypes.float6_e2m3fn),
    "float6_e3m2fn": Element("float6_e3m2fn", 4, 28.0, 2, ml_dtypes.float6_e3m2fn),
    "float4_e2m1fn": Element("float4_e2m1fn", 2, 6.0, 1, ml_dtypes.float4_e2m1fn),
    "int8": Element("int8", 0, 127 / 64, 6, None),
}


def _floor_log2(a: float) -> int:
    """floor(log2 a) for a finite a > 0, exactly (frexp: a = m * 2^k with 0.5 <= m < 1)."""
    m, k = math.frexp(a)
    return k - 1


def _ceil_log2_fraction(q: Fraction) -> int:
    """ceil(log2 q) for a rational q > 0, exactly."""
    k = q.numerator.bit_length() - q.denominator.bit_length()  # 2^(k-1) < q < 2^(k+1)
    while Fraction(2) ** k < q:
        k += 1
    while Fraction(2) ** (k - 1) >= q:
        k -= 1
    return k


def shared_exponent(amax: float, element: Element, mode: str = "floor") -> float:
    """The block's unbiased E8M0 exponent ``e`` (``X = 2^e``), or NaN for a NaN/Inf block."""
    if mode not in MODES:
        raise ValueError(mode)
    amax = float(amax)
    if math.isnan(amax) or math.isinf(amax):
        return math.nan
    if amax == 0.0:
        return float(E8M0_MIN)
    if mode == "floor":
        e = _floor_log2(amax) - element.emax
    elif mode == "ceil":
        e = _ceil_log2_fraction(Fraction(amax)) - element.emax
    elif mode == "even":
        # Round the significand s in [1, 2) half-up to mantissa_bits fraction bits; s rounds to 2
        # (a carry into the exponent) iff s >= 2 - 2^-(mantissa_bits + 1).
        m, k = math.frexp(amax)
        significand = Fraction(2 * m)
        bump = significand >= 2 - Fraction(1, 2 ** (element.mantissa_bits + 1))
        e = (k - 1) + int(bump) - element.emax
    else:  # rceil
        e = _ceil_log2_fraction(Fraction(amax) / Fraction(element.max))
    return float(min(max(e, E8M0_MIN), E8M0_MAX))


def cast_elements(v: np.ndarray, element: Element) -> np.ndarray:
    """Round float64 ``v`` to the element format (RNE) saturating at ``±max``; float64 out."""
    v = np.clip(np.asarray(v, dtype=np.float64), -element.max, element.max)
    if element.dtype is None:  # MXINT8: k/64, k an integer with |k| <= 127
        return np.rint(v * 64.0) / 64.0
    return v.astype(element.dtype).astype(np.float64)


def to_blocks(x: np.ndarray, axis: int, block: int = BLOCK_SIZE) -> np.ndarray:
    """Zero-pad ``axis`` to a multiple of ``block`` and split it in place into (n_blocks, block)."""
    axis = axis % x.ndim
    length = x.shape[axis]
    pad = (-length) % block
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    padded = np.pad(x, widths)
    shape = x.shape[:axis] + ((length + pad) // block, block) + x.shape[axis + 1:]
    return padded.reshape(shape)


def from_blocks(blocks: np.ndarray, axis: int, length: int) -> np.ndarray:
    axis = axis % (blocks.ndim - 1)
    shape = blocks.shape[:axis] + (blocks.shape[axis] * blocks.shape[axis + 1],) + blocks.shape[axis + 2:]
    merged = blocks.reshape(shape)
    return np.take(merged, np.arange(length), axis=axis)


def mx_quantize(
    x: np.ndarray, element: str, axis: int = -1, mode: str = "floor", block: int = BLOCK_SIZE
) -> Tuple[np.ndarray, np.ndarray]:
    """``(values, scales)`` of float32 ``x`` in MX format ``element`` with blocks along ``axis``.

    ``values`` (float32, ``x``'s shape) are the dequantized elements ``P_i * X``; ``scales``
    (float32) are the shared scales ``X`` in the blocked layout
    ``shape[:axis] + (n_blocks, 1) + shape[axis+1:]``, NaN for a NaN/Inf block.
    """
    fmt = ELEMENTS[element]
    x = np.asarray(x, dtype=np.float32)
    axis = axis % x.ndim
    blocks = to_blocks(x.astype(np.float64), axis, block)
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(blocks), axis=axis + 1, keepdims=True)  # NaN propagates
    exponent = np.vectorize(lambda a: shared_exponent(a, fmt, mode), otypes=[np.float64])(amax)
    finite = ~np.isnan(exponent)
    scale = np.where(finite, np.ldexp(1.0, np.where(finite, exponent, 0.0).astype(np.int64)), np.nan)
    with np.errstate(invalid="ignore"):
        elements = cast_elements(np.where(finite, blocks / np.where(finite, scale, 1.0), 0.0), fmt)
    values = np.where(finite, elements * scale, np.nan)
    return from_blocks(values, axis, x.shape[axis]).astype(np.float32), scale.astype(np.float32)


def assert_same_bits(got, expected, what: str = "") -> None:
    """Assert equal float32 bit patterns (+0 and -0 differ), any NaN matching any NaN."""
    got = np.asarray(got.detach().cpu().numpy() if hasattr(got, "detach") else got)
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    got32, expected32 = got.astype(np.float32), expected.astype(np.float32)
    same = (got32.view(np.uint32) == expected32.view(np.uint32)) | (np.isnan(got32) & np.isnan(expected32))
    if not same.all():
        where = np.argwhere(~same)[:6]
        shown = "\n  ".join(f"{tuple(i)}: expected {expected32[tuple(i)]!r} got {got32[tuple(i)]!r}" for i in where)
        raise AssertionError(f"{what}: {int((~same).sum())} of {same.size} differ, e.g.\n  {shown}")
