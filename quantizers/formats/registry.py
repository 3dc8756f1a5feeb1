"""Named formats by the names torch and ml_dtypes use, plus common aliases."""
from __future__ import annotations

from typing import Dict, List, Union

import torch

from .base import NumberFormat
from .e8m0 import E8M0
from .floating import FloatFormat
from .hifloat8 import HiFloat8
from .integer import IntFormat


def _float(name: str, exponent_bits: int, mantissa_bits: int, bias: int, special: str) -> FloatFormat:
    return FloatFormat(exponent_bits, mantissa_bits, bias, special, label=name)


NAMED_FORMATS: Dict[str, NumberFormat] = {
    fmt.name: fmt
    for fmt in (
        _float("float8_e4m3fn", 4, 3, 7, "fn"),
        _float("float8_e5m2", 5, 2, 15, "ieee"),
        _float("float8_e4m3fnuz", 4, 3, 8, "fnuz"),
        _float("float8_e5m2fnuz", 5, 2, 16, "fnuz"),
        _float("float8_e4m3", 4, 3, 7, "ieee"),
        _float("float8_e3m4", 3, 4, 3, "ieee"),
        _float("float8_e4m3b11fnuz", 4, 3, 11, "fnuz"),
        _float("float6_e2m3fn", 2, 3, 1, "none"),
        _float("float6_e3m2fn", 3, 2, 3, "none"),
        _float("float4_e2m1fn", 2, 1, 1, "none"),
        # AMCT/Ascend FLOAT4_E1M2: bias 1 as in CANN's Float4E1M2 (values k/4, k = 0..7, max 1.75).
        _float("float4_e1m2", 1, 2, 1, "none"),
        E8M0(),
        HiFloat8(),
        *(IntFormat(bits, signed) for signed in (True, False) for bits in (2, 3, 4, 5, 6, 7, 8, 16)),
    )
}
"""Every named format, keyed by its canonical name (``get_format(name)`` returns these objects)."""

_ALIASES: Dict[str, str] = {
    "e4m3": "float8_e4m3fn", "e4m3fn": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn",
    "fp8_e4m3fn": "float8_e4m3fn", "fp8e4m3": "float8_e4m3fn", "float8_e4m3_fn": "float8_e4m3fn",
    "e5m2": "float8_e5m2", "fp8_e5m2": "float8_e5m2", "fp8e5m2": "float8_e5m2",
    "e4m3fnuz": "float8_e4m3fnuz", "fp8_e4m3fnuz": "float8_e4m3fnuz",
    "e5m2fnuz": "float8_e5m2fnuz", "fp8_e5m2fnuz": "float8_e5m2fnuz",
    "e3m4": "float8_e3m4", "e4m3b11fnuz": "float8_e4m3b11fnuz",
    "e2m3": "float6_e2m3fn", "fp6_e2m3": "float6_e2m3fn", "float6_e2m3": "float6_e2m3fn",
    "e3m2": "float6_e3m2fn", "fp6_e3m2": "float6_e3m2fn", "float6_e3m2": "float6_e3m2fn",
    "e2m1": "float4_e2m1fn", "fp4": "float4_e2m1fn", "fp4_e2m1": "float4_e2m1fn",
    "float4_e2m1": "float4_e2m1fn", "float4_e2m1fn_x2": "float4_e2m1fn",
    "e1m2": "float4_e1m2", "fp4_e1m2": "float4_e1m2", "float4_e1m2fn": "float4_e1m2",
    "e8m0": "float8_e8m0fnu", "float8_e8m0": "float8_e8m0fnu", "e8m0fnu": "float8_e8m0fnu",
    "hif8": "hifloat8", "hifloat": "hifloat8",
}


def known_format_names() -> List[str]:
    """Canonical names accepted by :func:`get_format` (aliases not included)."""
    return list(NAMED_FORMATS)


def get_format(name: Union[str, torch.dtype, NumberFormat, type]) -> NumberFormat:
    """The format called ``name``: a canonical name (``"float8_e4m3fn"``, ``"int4"``, ``"hifloat8"``),
    an alias (``"e4m3"``, ``"fp4"``, ``"e8m0"``, ``"hif8"``), a ``torch.dtype`` such as
    ``torch.float8_e5m2``, an ``ml_dtypes`` type, or a format object (returned unchanged).

    Raises ``ValueError`` listing the known names for anything else.
    """
    if isinstance(name, NumberFormat):
        return name
    if isinstance(name, torch.dtype):
        key = str(name).removeprefix("torch.")
    elif isinstance(name, type) and hasattr(name, "__name__"):
        key = name.__name__
    elif isinstance(name, str):
        key = name
    else:
        raise TypeError(f"format name must be a str, torch.dtype or NumberFormat, got {type(name).__name__}")
    key = key.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in NAMED_FORMATS:
        raise ValueError(f"unknown format {name!r}; known formats: {', '.join(NAMED_FORMATS)}")
    return NAMED_FORMATS[key]
