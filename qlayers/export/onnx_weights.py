"""Quantized constants (weights, biases) as ONNX stores them: low-bit codes and scales in
initializers, dequantized in the graph.

:class:`OnnxDequantize` holds the codes of one QuantTensor and returns its value in ``forward``
through the ops of :mod:`qlayers.export.onnx_ops`:

- codes in the element type :func:`~qlayers.export.onnx_types.element_type` picks (their own type,
  or a carrier that holds every value exactly) -> one ``DequantizeLinear``: per tensor, per axis
  (per channel) or blocked (``block_size`` = the group size along the group axis; a last partial
  block is ONNX's too, so nothing is padded);
- OCP MX: the scales are powers of two, float32 for ``target="ort"``, FLOAT8E8M0 for ``"spec"``;
- NVFP4: two chained ``DequantizeLinear``: the E4M3 block scales times the float32 tensor scale,
  then the elements times those scales; ``q * (s_block * s_tensor)`` with the product rounded to
  float32 first is exactly how qzoo computes the value;
- formats with no ONNX type or carrier (HiFloat8, FP8 without special codes, E3M4, ...): ``uint8``
  codes, a ``Gather`` from the format's 2^bits-entry value table (the "value-table lowering",
  named ``<constant>.value_table`` in the graph), then ``(e - z) * scale`` in float32.

Every value is qzoo's bit for bit: ``(q - z) * s`` and ``e * s`` computed once in float32.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from quantizers import QuantTensor

from . import onnx_ops
from .onnx_types import ExportError, OnnxElement, element_type, supported_formats


def _storage(element: OnnxElement, values: torch.Tensor) -> torch.Tensor:
    """``values`` (exact element values) in a torch dtype the exporter writes and a ``Cast`` to
    ``element`` turns into the element type exactly (folded into a typed initializer later)."""
    name = element.name
    if name.startswith("FLOAT8"):
        return values.to(getattr(torch, element.format_name))
    if name.startswith("FLOAT"):  # FP4/FP6 values travel as E4M3 bytes until the cast is folded
        return values.to(torch.float8_e4m3fn)
    if name in ("INT2", "INT4", "INT8"):
        return values.to(torch.int8)
    if name in ("UINT2", "UINT4", "UINT8"):
        return values.to(torch.uint8)
    if name == "INT16":
        return values.to(torch.int16)
    return values.to(torch.int32)  # UINT16, INT32


def _is_e8m0(scale: torch.Tensor) -> bool:
    """Every value is NaN or a power of two in [2^-127, 2^127] (an E8M0 code)."""
    finite = scale[~torch.isnan(scale)]
    mantissa, exponent = torch.frexp(finite)
    return bool(((finite > 0) & (mantissa == 0.5) & (exponent - 1 >= -127) & (exponent - 1 <= 127)).all())


def _is_e4m3(scale: torch.Tensor) -> bool:
    return bool((scale.to(torch.float8_e4m3fn).to(scale.dtype) == scale).all())


class OnnxDequantize(nn.Module):
    """One quantized constant, stored as ONNX stores it (see the module docstring).

    Args:
        qt: the QuantTensor (float32 ``value_``).
        target: ``"ort"`` or ``"spec"``.
        where: who owns it (``"layer 'fc1' weight"``), for error messages.
    """

    def __init__(self, qt: QuantTensor, target: str, where: str) -> None:
        super().__init__()
        if qt.value_.dtype != torch.float32:
            raise ExportError(f"{where}: export_onnx writes float32 models, got a {qt.value_.dtype} quantized tensor; call model.float() first")
        self.fmt = qt.fmt
        self.element = element_type(qt.fmt, target)
        self.shape = tuple(qt.shape)
        self.axis, self.block_size = 0, 0
        self.scale_type = _onnx_type("FLOAT")
        self.grouping: Optional[Tuple[int, int]] = None
        for name in ("zero_point", "outer_scale", "value_table"):
            self.register_buffer(name, None)
        zero_point = qt._zero_point
        if zero_point is not None and not bool((zero_point == torch.round(zero_point)).all()):
            raise ExportError(
                f"{where}: a fractional zero point (coreai_opt's MINVAL formulation) has no ONNX DequantizeLinear form; "
                "use the ZP formulation for export"
            )
        if self.element is None:
            if qt.fmt.bits > 8:
                raise ExportError(f"{where}: format {qt.fmt.name} has no ONNX type for target={target!r}; supported: {supported_formats(target)}")
            self._lookup_layout(qt)
        else:
            self._dequantize_layout(qt, target, where)

    # ---- DequantizeLinear --------------------------------------------------------------------
    def _dequantize_layout(self, qt: QuantTensor, target: str, where: str) -> None:
        elements = qt._ungroup(qt._elements_())
        elements = torch.where(torch.isnan(qt.scale.detach()).expand(elements.shape), torch.zeros_like(elements), elements)
        scale, zero_point = qt.scale_.detach().float(), qt._zero_point
        if qt.is_groupwise:
            self.axis, self.block_size = qt.group_dim, qt.group_size
            scale = scale.squeeze(qt.group_dim + 1)
            zero_point = None if zero_point is None else zero_point.squeeze(qt.group_dim + 1)
        else:
            scale, zero_point = self._per_axis(scale, zero_point, len(self.shape), where)
        self.register_buffer("codes", _storage(self.element, elements.detach()))
        if zero_point is not None:
            zero_point = zero_point.detach().expand(scale.shape) if zero_point.dim() else zero_point.detach()
            self.register_buffer("zero_point", _storage(self.element, zero_point))
        if qt.outer_scale_ is not None:
            if _is_e4m3(scale):  # NVFP4: E4M3 block scales x a float32 tensor scale, two DQs
                self.register_buffer("scale", scale.to(torch.float8_e4m3fn))
                self.register_buffer("outer_scale", qt.outer_scale_.detach().float().reshape(()))
                return
            scale = (qt.scale_ * qt.outer_scale_).detach().float()  # the same product, one scale
            scale = scale.squeeze(qt.group_dim + 1) if qt.is_groupwise else self._per_axis(scale, None, len(self.shape), where)[0]
        if target == "spec" and qt.scale_format is not None and qt.scale_format.name == "float8_e8m0fnu" and _is_e8m0(scale):
            self.scale_type = _onnx_type("FLOAT8E8M0")
        self.register_buffer("scale", scale)

    def _per_axis(self, scale, zero_point, ndim: int, where: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """A per-tensor or per-channel scale (and zero point) as ONNX wants it: 0-d, or 1-D with ``axis``."""
        if scale.numel() == 1 and (zero_point is None or zero_point.numel() == 1):
            return scale.reshape(()), None if zero_point is None else zero_point.reshape(())
        shape = (1,) * (ndim - scale.dim()) + tuple(scale.shape)
        axes = [d for d, n in enumerate(shape) if n > 1]
        if len(axes) != 1:
            raise ExportError(
                f"{where}: a scale of shape {tuple(scale.shape)} for a tensor of shape {self.shape} varies along several "
                "axes (2-D tiles); ONNX Q/DQ scales are per tensor, per axis or blocked along one axis"
            )
        self.axis = axes[0]
        if zero_point is not None:
            zero_point = zero_point.reshape((1,) * (ndim - zero_point.dim()) + tuple(zero_point.shape)).expand(shape).reshape(-1)
        return scale.reshape(-1), zero_point

    # ---- value table -------------------------------------------------------------------------
    def _lookup_layout(self, qt: QuantTensor) -> None:
        fmt = qt.fmt
        elements = qt._elements_()
        elements = torch.where(torch.isnan(qt._scale_eff_.detach()).expand(elements.shape), torch.zeros_like(elements), elements)
        codes = fmt.encode(elements, rounding="even", saturating=False)
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("value_table", fmt.decode(torch.arange(2 ** fmt.bits, dtype=torch.int32)).float())
        self.register_buffer("scale", qt._scale_eff_.detach().float())
        self.grouping = (qt.group_dim, qt.shape[qt.group_dim]) if qt.is_groupwise else None

    # ---- forward -----------------------------------------------------------------------------
    def forward(self) -> torch.Tensor:
        if self.element is None:
            value = onnx_ops.value_table_lookup(self.value_table, self.codes) * self.scale
            if self.grouping is not None:
                dim, length = self.grouping
                value = value.flatten(dim, dim + 1).narrow(dim, 0, length)
            return value
        scale = self.scale
        if self.outer_scale is not None:
            scale = onnx_ops.dequantize_linear(scale, self.outer_scale, None, _onnx_type("FLOAT8E4M3FN"), 0, 0, _onnx_type("FLOAT"))
        return onnx_ops.dequantize_linear(
            self.codes, scale, self.zero_point, self.element.onnx_type, self.axis, self.block_size, self.scale_type
        )

    def describe(self) -> str:
        """How this constant is stored, e.g. ``"float4_e2m1fn in FLOAT8E4M3FN (carried), blocks of 32, FLOAT8E8M0 scales"``."""
        if self.element is None:
            return f"{self.fmt.name} as uint8 codes + value-table Gather"
        text = f"{self.fmt.name} in {self.element.name}"
        if self.element.format != self.fmt:
            text += " (carried)"
        text += f", blocks of {self.block_size}" if self.block_size else (", per axis" if self.scale.dim() else ", per tensor")
        if self.outer_scale is not None:
            text += ", E4M3 block scales x float32 tensor scale"
        elif self.scale_type == _onnx_type("FLOAT8E8M0"):
            text += ", FLOAT8E8M0 scales"
        return text

    @property
    def opset(self) -> int:
        """The first opset whose DequantizeLinear takes this storage."""
        opset = 21 if self.block_size else 19
        if self.element is not None:
            opset = max(opset, self.element.opset)
        if self.scale_type == _onnx_type("FLOAT8E8M0"):
            opset = max(opset, 24)
        return opset


def _onnx_type(name: str) -> int:
    from onnx import TensorProto
    return getattr(TensorProto, name)
