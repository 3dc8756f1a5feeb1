"""The element format a quantizer's attributes describe."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Tuple

from ..formats import NAMED_FORMATS, FloatFormat, HiFloat8, IntFormat, NumberFormat, get_format
from .errors import QuantizerConfigError
from .modes import FloatStandard, QuantType

if TYPE_CHECKING:
    from .attributes import QuantizerAttributes


def element_format_of(a: "QuantizerAttributes") -> NumberFormat:
    """``element_format`` if set; else an ``IntFormat(bit_width, signed, narrow_range)`` or a
    ``FloatFormat`` from the widths and ``float_standard`` (a named format when one matches).
    ``saturating=False`` needs a format with Inf or NaN to overflow to."""
    return _element_format(
        a.element_format, a.quant_type, a.bit_width, a.signed, a.narrow_range, a.exponent_bit_width,
        a.mantissa_bit_width, a.exponent_bias, a.float_standard, a.saturating,
    )


@functools.lru_cache(maxsize=512)  # building a FloatFormat computes its code tables
def _element_format(*fields) -> NumberFormat:
    a = _FormatFields(*fields)
    if a.element_format is not None:
        fmt = _named(a.element_format)
    elif a.quant_type is QuantType.INT:
        if a.bit_width is None:
            raise QuantizerConfigError("an int quantizer needs bit_width (e.g. bit_width = 8)", "bit_width")
        fmt = _built("bit_width", lambda: IntFormat(bits=a.bit_width, signed=a.signed, narrow=a.narrow_range))
    else:
        fmt = _minifloat(a)
    if a.saturating is False and not (fmt.has_inf or fmt.has_nan):
        raise QuantizerConfigError(
            f"saturating=False needs a format with Inf or NaN for overflow; {fmt.name} has neither "
            "(set saturating=True, or use an OCP/IEEE format)", "saturating",
        )
    return fmt


class _FormatFields(NamedTuple):
    element_format: Any
    quant_type: QuantType
    bit_width: Optional[int]
    signed: bool
    narrow_range: bool
    exponent_bit_width: Optional[int]
    mantissa_bit_width: Optional[int]
    exponent_bias: Optional[int]
    float_standard: Optional[FloatStandard]
    saturating: Optional[bool]


def _named(name) -> NumberFormat:
    try:
        fmt = get_format(name)
    except (TypeError, ValueError) as error:
        raise QuantizerConfigError(f"element_format={name!r}: {error}", "element_format") from None
    if not isinstance(fmt, (IntFormat, FloatFormat, HiFloat8)):
        raise QuantizerConfigError(
            f"element_format={name!r} is {fmt.name}, a scale format, not an element format; allowed "
            "values: integer, minifloat and HiFloat8 formats (e.g. 'int8', 'float8_e4m3fn', 'hifloat8')",
            "element_format",
        )
    return fmt


def _built(attribute: str, make):
    try:
        return make()
    except (TypeError, ValueError) as error:
        raise QuantizerConfigError(f"{attribute}: {error}", attribute) from None


def _minifloat(a: _FormatFields) -> NumberFormat:
    if a.exponent_bit_width is None or a.mantissa_bit_width is None:
        raise QuantizerConfigError(
            "a float quantizer needs exponent_bit_width and mantissa_bit_width: inherit a format "
            "mixin such as Fp8e4m3Mixin, or set element_format", "exponent_bit_width",
        )
    total = int(a.signed) + a.exponent_bit_width + a.mantissa_bit_width
    if a.bit_width is not None and a.bit_width != total:
        raise QuantizerConfigError(
            f"bit_width={a.bit_width} contradicts exponent_bit_width={a.exponent_bit_width} + "
            f"mantissa_bit_width={a.mantissa_bit_width} + sign = {total}", "bit_width",
        )
    special, default_bias = _float_special(a.float_standard or FloatStandard.OCP, a.exponent_bit_width, a.mantissa_bit_width)
    fmt = _built("exponent_bit_width", lambda: FloatFormat(
        a.exponent_bit_width, a.mantissa_bit_width, default_bias if a.exponent_bias is None else a.exponent_bias,
        special, signed=a.signed, saturating=True if a.saturating is None else a.saturating,
    ))
    return next((named for named in NAMED_FORMATS.values() if named == fmt), fmt)


def _float_special(standard: FloatStandard, exponent_bits: int, mantissa_bits: int) -> Tuple[str, int]:
    ieee_bias = 2 ** (exponent_bits - 1) - 1
    if standard is FloatStandard.FNUZ:
        return "fnuz", ieee_bias + 1
    if standard is FloatStandard.IEEE:
        return "ieee", ieee_bias
    if standard is FloatStandard.NONE:
        return "none", ieee_bias  # every code finite (Brevitas's Fp8e4m3Mixin alone: max 480)
    if (exponent_bits, mantissa_bits) == (4, 3):
        return "fn", ieee_bias  # OCP E4M3
    if (exponent_bits, mantissa_bits) == (5, 2):
        return "ieee", ieee_bias  # OCP E5M2
    return "none", ieee_bias  # OCP MX FP6 / FP4
