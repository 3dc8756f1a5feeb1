"""qzoo numerics: number formats, scaling, observers, QuantTensors and quantizers.

This package never imports :mod:`qlayers`.
"""
from .formats import (
    E8M0,
    NAMED_FORMATS,
    ROUNDING_MODES,
    SPECIAL_POLICIES,
    FloatFormat,
    HiFloat8,
    IntFormat,
    NumberFormat,
    get_format,
    known_format_names,
    pack_fp4,
    pack_fp6,
    pack_int4,
    unpack_fp4,
    unpack_fp6,
    unpack_int4,
)

__all__ = [
    "E8M0", "NAMED_FORMATS", "ROUNDING_MODES", "SPECIAL_POLICIES", "FloatFormat", "HiFloat8",
    "IntFormat", "NumberFormat", "get_format", "known_format_names",
    "pack_fp4", "unpack_fp4", "pack_int4", "unpack_int4", "pack_fp6", "unpack_fp6",
]
