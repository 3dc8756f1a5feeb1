"""The ONNX operators of an export, as ``torch.library`` custom ops with their ONNX translations.

Each op's eager kernel computes what its ONNX node computes (so the export-ready model runs in torch
too), and :func:`translation_table` maps it to standard ONNX for ``torch.onnx.export``'s
``custom_translation_table``:

- ``qzoo_onnx::dequantize_linear(codes, scale, zero_point, onnx_type, axis, block_size, scale_type)``
  -> ``DequantizeLinear(Cast(codes, onnx_type), scale, zero_point)``: ``(q - z) * s`` in float32,
  per tensor (0-d scale), per axis (1-D scale, ``block_size=0``) or blocked (scale of the codes'
  rank, ``block_size`` along ``axis``). The ``Cast`` of a constant is folded into a typed
  initializer afterwards (:mod:`qlayers.export.onnx_graph`). ``scale_type`` FLOAT8E8M0 casts the
  power-of-two scales to E8M0 (exact) and asks for float32 output.
- ``qzoo_onnx::quantize_dequantize(x, scale, zero_point, format_name, onnx_type, axis, block_size, clip,
  saturate)`` -> ``QuantizeLinear`` (output type ``onnx_type``, the zero point's), an optional ``Clip`` of the codes to the
  format's range (INT4 or narrow INT8 activations in INT8), ``DequantizeLinear``.
- ``qzoo_onnx::value_table_lookup(table, codes)`` -> ``Gather(table, Cast(codes, INT32))``: the
  values of formats ONNX has no type for.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from quantizers.fake_quant import fake_quantize
from quantizers.formats import IntFormat, NumberFormat

_FORMATS: Dict[str, NumberFormat] = {}


def format_key(fmt: NumberFormat) -> str:
    """The name the ops know ``fmt`` by (registered here: a custom op takes strings, not formats)."""
    _FORMATS[fmt.name] = fmt
    return fmt.name


def broadcast_scale(scale: torch.Tensor, shape, axis: int, block_size: int) -> torch.Tensor:
    """A Q/DQ ``scale`` (or zero point) in ONNX's layout made broadcastable to ``shape``: 0-d as it
    is, 1-D along ``axis``, blocked repeated ``block_size`` times along ``axis`` (last block cut)."""
    if scale.dim() == 0:
        return scale
    axis = axis % len(shape)
    if block_size == 0:
        view = [1] * len(shape)
        view[axis] = scale.numel()
        return scale.reshape(view)
    return scale.repeat_interleave(block_size, dim=axis).narrow(axis, 0, shape[axis])


@torch.library.custom_op("qzoo_onnx::dequantize_linear", mutates_args=())
def dequantize_linear(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor], onnx_type: int, axis: int,
    block_size: int, scale_type: int,
) -> torch.Tensor:
    elements = codes.to(torch.float32)
    if zero_point is not None:
        elements = elements - broadcast_scale(zero_point.to(torch.float32), codes.shape, axis, block_size)
    return elements * broadcast_scale(scale.to(torch.float32), codes.shape, axis, block_size)


@dequantize_linear.register_fake
def _(codes, scale, zero_point, onnx_type, axis, block_size, scale_type):
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


@torch.library.custom_op("qzoo_onnx::quantize_dequantize", mutates_args=())
def quantize_dequantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor], format_name: str, onnx_type: int,
    axis: int, block_size: int, clip: bool, saturate: bool,
) -> torch.Tensor:
    fmt = _FORMATS[format_name]
    s = broadcast_scale(scale, x.shape, axis, block_size)
    z = None
    if zero_point is not None and isinstance(fmt, IntFormat):
        z = broadcast_scale(zero_point.to(torch.float32), x.shape, axis, block_size)
    return fake_quantize(x, s, fmt, z, None, saturate)


@quantize_dequantize.register_fake
def _(x, scale, zero_point, format_name, onnx_type, axis, block_size, clip, saturate):
    return torch.empty_like(x)


@torch.library.custom_op("qzoo_onnx::value_table_lookup", mutates_args=())
def value_table_lookup(table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    return table[codes.to(torch.int64)]


@value_table_lookup.register_fake
def _(table, codes):
    return torch.empty(codes.shape, dtype=table.dtype, device=codes.device)


def translation_table() -> Dict[object, object]:
    """``custom_translation_table`` for ``torch.onnx.export``: each op above -> standard ONNX."""
    from onnx import TensorProto
    from onnxscript import opset23 as op

    def dequantize_linear_onnx(codes, scale, zero_point, onnx_type: int, axis: int, block_size: int, scale_type: int):
        x = op.Cast(codes, to=onnx_type)
        zp = None if zero_point is None else op.Cast(zero_point, to=onnx_type)
        if scale_type != TensorProto.FLOAT:
            scale = op.Cast(scale, to=scale_type)
        return op.DequantizeLinear(x, scale, zp, axis=axis, block_size=block_size, output_dtype=TensorProto.FLOAT)

    def quantize_dequantize_onnx(
        x, scale, zero_point, format_name: str, onnx_type: int, axis: int, block_size: int, clip: bool, saturate: bool,
    ):
        output_dtype = onnx_type if zero_point is None else 0  # a zero point's type is the output type
        q = op.QuantizeLinear(
            x, scale, zero_point, axis=axis, block_size=block_size, saturate=int(saturate), output_dtype=output_dtype
        )
        if clip:
            fmt = _FORMATS[format_name]
            low = op.CastLike(op.Constant(value_float=float(fmt.min_int)), q)
            high = op.CastLike(op.Constant(value_float=float(fmt.max_int)), q)
            q = op.Clip(q, low, high)
        return op.DequantizeLinear(q, scale, zero_point, axis=axis, block_size=block_size)

    def value_table_lookup_onnx(table, codes):
        return op.Gather(table, op.Cast(codes, to=TensorProto.INT32), axis=0)

    return {
        torch.ops.qzoo_onnx.dequantize_linear.default: dequantize_linear_onnx,
        torch.ops.qzoo_onnx.quantize_dequantize.default: quantize_dequantize_onnx,
        torch.ops.qzoo_onnx.value_table_lookup.default: value_table_lookup_onnx,
    }
