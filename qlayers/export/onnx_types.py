"""Which ONNX element type stores a qzoo format, per export target: its own type, a wider type that
holds every one of its values exactly (a carrier), or none (the value-table lowering).

Targets:

- ``"ort"``: what onnxruntime's CPU provider runs today (opset <= 25): INT2/4/8/16/32, UINT*, the four
  FP8 types. FP4/FP6 elements travel exactly in FLOAT8E4M3FN bytes, INT3 in INT4, INT5-7 in INT8.
- ``"spec"``: the ONNX standard types as well: FLOAT4E2M1 (opset 23), FLOAT6E2M3/FLOAT6E3M2 (opset 28).

A format with no exact type or carrier (HiFloat8, FP8 E3M4, E4M3 without special codes, ...) has
:func:`element_type` ``None``; up to 8 bits it is lowered as ``uint8`` codes and a ``Gather`` from
its value table (:mod:`qlayers.export.onnx_weights`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

from quantizers.formats import FloatFormat, IntFormat, NumberFormat, get_format

TARGETS = ("ort", "spec")


class ExportError(ValueError):
    """A model, layer or format that :func:`qlayers.export.export_onnx` cannot write exactly."""


@dataclass(frozen=True)
class OnnxElement:
    """An ONNX tensor element type: its ``TensorProto`` number, name, the first opset whose
    QuantizeLinear/DequantizeLinear take it, the qzoo format with the same values and the targets
    that may use it."""

    name: str
    onnx_type: int
    opset: int
    format_name: str
    targets: Tuple[str, ...] = TARGETS

    @property
    def format(self) -> NumberFormat:
        if self.format_name in ("int32", "uint32"):
            return IntFormat(32, self.format_name == "int32")
        return get_format(self.format_name)


def _elements() -> Tuple[OnnxElement, ...]:
    from onnx import TensorProto as T

    spec = ("spec",)
    return (  # narrowest first: the first that holds a format is its storage
        OnnxElement("INT2", T.INT2, 25, "int2"), OnnxElement("UINT2", T.UINT2, 25, "uint2"),
        OnnxElement("INT4", T.INT4, 21, "int4"), OnnxElement("UINT4", T.UINT4, 21, "uint4"),
        OnnxElement("FLOAT4E2M1", T.FLOAT4E2M1, 23, "float4_e2m1fn", spec),
        OnnxElement("FLOAT6E2M3", T.FLOAT6E2M3, 28, "float6_e2m3fn", spec),
        OnnxElement("FLOAT6E3M2", T.FLOAT6E3M2, 28, "float6_e3m2fn", spec),
        OnnxElement("INT8", T.INT8, 10, "int8"), OnnxElement("UINT8", T.UINT8, 10, "uint8"),
        OnnxElement("FLOAT8E4M3FN", T.FLOAT8E4M3FN, 19, "float8_e4m3fn"),
        OnnxElement("FLOAT8E4M3FNUZ", T.FLOAT8E4M3FNUZ, 19, "float8_e4m3fnuz"),
        OnnxElement("FLOAT8E5M2", T.FLOAT8E5M2, 19, "float8_e5m2"),
        OnnxElement("FLOAT8E5M2FNUZ", T.FLOAT8E5M2FNUZ, 19, "float8_e5m2fnuz"),
        OnnxElement("INT16", T.INT16, 21, "int16"), OnnxElement("UINT16", T.UINT16, 21, "uint16"),
        OnnxElement("INT32", T.INT32, 10, "int32"),
    )


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is unknown; allowed values: {', '.join(map(repr, TARGETS))}")
    return target


def holds(carrier: NumberFormat, fmt: NumberFormat) -> bool:
    """Whether every value of ``fmt`` (NaN and ±Inf included) is a value of ``carrier``."""
    if isinstance(fmt, IntFormat) or isinstance(carrier, IntFormat):
        return (
            isinstance(fmt, IntFormat) and isinstance(carrier, IntFormat)
            and carrier.min_int <= fmt.min_int and fmt.max_int <= carrier.max_int
        )
    if (fmt.has_nan and not carrier.has_nan) or (fmt.has_inf and not carrier.has_inf):
        return False
    finite = {v for v in carrier.code_values if math.isfinite(v)}
    return all(v in finite for v in fmt.code_values if math.isfinite(v))


def element_type(fmt: NumberFormat, target: str) -> Optional[OnnxElement]:
    """The ONNX type ``fmt``'s elements are stored in for ``target``: the type with exactly its
    values if the target has one, else the narrowest type of opset <= 25 that holds them all (of
    the same signedness if one does), else ``None``."""
    candidates = [e for e in _elements() if target in e.targets]
    for element in candidates:
        if element.format == fmt:
            return element
    carriers = [e for e in candidates if e.opset <= 25]  # FP6 (opset 28) stores only FP6
    same_sign = [e for e in carriers if e.format.signed == fmt.signed]
    for element in same_sign + carriers:
        if holds(element.format, fmt):
            return element
    return None


def quantize_type(fmt: NumberFormat, target: str) -> Optional[OnnxElement]:
    """The QuantizeLinear output type of activations in ``fmt``: for integers the narrowest of
    INT8/UINT8/INT16 holding them (a ``Clip`` then narrows to ``fmt``'s range); for floats only the
    FP8 type with exactly ``fmt``'s values (QuantizeLinear rounds onto its output type's grid, so a
    carrier would round differently). ``None`` if there is none."""
    candidates = [e for e in _elements() if target in e.targets]
    if isinstance(fmt, IntFormat):
        for element in candidates:
            if element.name in ("INT8", "UINT8", "INT16") and holds(element.format, fmt):
                return element
        return None
    if isinstance(fmt, FloatFormat):
        for element in candidates:
            if element.format == fmt and element.name.startswith("FLOAT8"):
                return element
    return None


def supported_formats(target: str) -> str:
    """A short description of what ``target`` stores natively (for error messages)."""
    if target == "ort":
        return ("INT2-INT16 and UINT2-UINT16 (INT3 in INT4, INT5-7 in INT8), the four FP8 types, FP4/FP6 "
                "carried in FLOAT8E4M3FN; other formats of up to 8 bits as uint8 codes with a value-table Gather")
    return ("INT2-INT16, UINT2-UINT16, the four FP8 types, FLOAT4E2M1, FLOAT6E2M3/E3M2 with FLOAT8E8M0 MX scales; "
            "other formats of up to 8 bits as uint8 codes with a value-table Gather")
