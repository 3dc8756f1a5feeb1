"""Activation quantizers as ONNX ``QuantizeLinear -> DequantizeLinear`` pairs.

:class:`OnnxQuantizeDequantize` replaces one :class:`~quantizers.TensorQuantizer` of an activation:

- static ranges (a calibrated observer, a frozen, learned or fixed range) and unscaled FP8 casts:
  constant scale and zero point, per tensor or per channel (1-D scale along the channel axis);
- dynamic per-tensor or per-token ranges: the graph computes ``amax = max |x|`` (NaN/Inf read as
  0) and the scale rule (``amax / 127``, ``amax / 448``, 1 where ``amax`` is 0) with the same
  float32 operations as qzoo, then a blocked ``QuantizeLinear`` (one block = one token);
- dynamic OCP MX activations with FP8 or INT8 elements (MXFP8, MXINT8, FLOOR rule): the E8M0
  block scales computed in the graph (:func:`mx_scale`), then a blocked ``QuantizeLinear``
  (``block_size=32``).

Integer activations quantize to INT8/UINT8/INT16 and a ``Clip`` narrows the codes to the
format's range where it is narrower (INT4, narrow-range INT8); rounding to nearest even and
clamping commute for integer bounds, so this equals qzoo's clamp-then-round. Float activations need
an FP8 type with exactly the format's values. Anything else raises :class:`ExportError`. NaN
inputs of integer activations are not exact (QuantizeLinear of NaN to an integer type is not
defined; qzoo keeps NaN).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from quantizers import TensorQuantizer
from quantizers.formats import IntFormat
from quantizers.scaling.block_scales import E8M0_MAX_EXPONENT, E8M0_MIN_EXPONENT, element_emax
from quantizers.scaling.scalers import FloatScaler, IntScaler, MXScaler, Scales, UnitScaler
from quantizers.tensor_quantizer import RangeSource, widen_statistic

from . import onnx_ops
from .onnx_types import quantize_type
from .onnx_types import ExportError

ACTIVATION_SUPPORT = (
    "static per-tensor or per-channel integer (up to 16 bits) and FP8 (E4M3FN, E5M2, FNUZ) activations, "
    "dynamic per-tensor or per-token integer and FP8 activations with scale amax / max, "
    "dynamic OCP MX activations with FP8 or INT8 elements (MXFP8, MXINT8; FLOOR scale rule)"
)


class OnnxQuantizeDequantize(nn.Module):
    """``DequantizeLinear(QuantizeLinear(x))`` with the quantizer's scales (see the module docstring).

    Args:
        quantizer: the activation quantizer (eval mode).
        sample: a tensor it quantized during the probe forward (its shape resolves axes; static
            ranges do not depend on its values).
        target: ``"ort"`` or ``"spec"``.
        where: who owns it (``"layer 'fc1' input_quant"``), for error messages.
    """

    def __init__(self, quantizer: nn.Module, sample: Optional[torch.Tensor], target: str, where: str) -> None:
        super().__init__()
        if not isinstance(quantizer, TensorQuantizer):
            raise ExportError(f"{where}: {type(quantizer).__name__} is not a TensorQuantizer; export_onnx supports {ACTIVATION_SUPPORT}")
        fmt = quantizer.fmt
        element = quantize_type(fmt, target)
        if element is None:
            raise ExportError(
                f"{where}: activations in {fmt.name} have no ONNX QuantizeLinear type for target={target!r} "
                f"(QuantizeLinear must round onto the format's own grid); supported: {ACTIVATION_SUPPORT}"
            )
        if quantizer.rounding not in (None, "even"):
            raise ExportError(f"{where}: rounding={quantizer.rounding!r}; ONNX QuantizeLinear rounds to nearest even only")
        if sample is None:
            raise ExportError(f"{where}: the example inputs never reached this quantizer, so its layout is unknown; pass example inputs that run through it")
        self.format_name = onnx_ops.format_key(fmt)
        self.onnx_type = element.onnx_type
        self.clip = isinstance(fmt, IntFormat) and (fmt.min_int, fmt.max_int) != (element.format.min_int, element.format.max_int)
        self.saturate = bool(fmt._saturates(quantizer.saturating))
        self.axis = 0
        self.dynamic: Optional[TensorQuantizer] = None
        if isinstance(quantizer.scaler, UnitScaler):
            scale, zero_point = torch.ones(()), None
        elif is_dynamic(quantizer, where):
            _check_dynamic(quantizer, where)
            self.dynamic = quantizer
            self.axis = quantizer.granularity.resolve_axis(sample.ndim) if quantizer.granularity.kind != "tensor" else 0
            self.register_buffer("scale", None)
            self.register_buffer("zero_point", None)
            return
        else:
            scales = static_scales(quantizer, sample)
            if scales.offset is not None:
                raise ExportError(f"{where}: the MINVAL formulation (a float offset) has no ONNX QuantizeLinear form; use the ZP formulation")
            scale, zero_point = scales.scale, scales.zero_point
            kind = quantizer.granularity.kind
            if kind == "channel":
                self.axis = quantizer.granularity.resolve_axis(sample.ndim)
                scale = scale.reshape(-1)
                zero_point = None if zero_point is None else zero_point.expand_as(scales.scale).reshape(-1)
            elif kind != "tensor":
                raise ExportError(f"{where}: static {kind} activation scales are not exportable; supported: {ACTIVATION_SUPPORT}")
        self.register_buffer("scale", scale.detach().float())
        if zero_point is None or not bool((zero_point != 0).any()):
            self.register_buffer("zero_point", None)
        else:
            self.register_buffer("zero_point", _zero_point_storage(zero_point.detach(), element.name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic is None:
            return onnx_ops.quantize_dequantize(
                x, self.scale, self.zero_point, self.format_name, self.onnx_type, self.axis, 0, self.clip, self.saturate
            )
        quantizer = self.dynamic
        if isinstance(quantizer.scaler, MXScaler):
            scale, block = mx_scale(x.float(), quantizer), quantizer.granularity.group_size
        else:
            scale = quantizer.scaler(quantizer.granularity.amax(x.float())).scale
            block = x.shape[self.axis] if scale.dim() else 0
            if not isinstance(block, int):  # a symbolic token length (dynamic_shapes): no block_size attribute
                return self._per_row(x, scale)
        return onnx_ops.quantize_dequantize(x, scale, None, self.format_name, self.onnx_type, self.axis, block, self.clip, self.saturate)

    def _per_row(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Per-token Q/DQ as a per-axis one: ``x`` as rows (the token axis last), one scale per row
        (``axis=0``, a 1-D scale): the same ``x / s`` for every element, with no block size."""
        rows = x.movedim(self.axis, -1)
        y = onnx_ops.quantize_dequantize(
            rows.reshape(-1, rows.shape[-1]), scale.movedim(self.axis, -1).reshape(-1), None, self.format_name,
            self.onnx_type, 0, 0, self.clip, self.saturate,
        )
        return y.reshape(rows.shape).movedim(-1, self.axis)

    def describe(self) -> str:
        kind = "dynamic" if self.dynamic is not None else "static"
        return f"{self.format_name} activations, {kind} scale, QuantizeLinear -> DequantizeLinear"


def static_scales(quantizer: TensorQuantizer, sample: torch.Tensor) -> Scales:
    """The scales a static activation quantizer (calibrated observer, frozen, learned or fixed
    range: not :func:`is_dynamic`) applies, read in eval mode so no observer is updated; ``sample``
    only gives the layout (static ranges do not depend on its values)."""
    training = quantizer.training
    quantizer.eval()
    try:
        with torch.no_grad():
            return quantizer.scaler(widen_statistic(quantizer.range_for(sample), torch.float32))
    finally:
        quantizer.train(training)


def is_dynamic(quantizer: TensorQuantizer, where: str) -> bool:
    """Whether ``quantizer`` computes its scale from each tensor (dynamic) rather than a stored range
    (static); raises :class:`ExportError` for calibration mode or a static range never calibrated."""
    source = quantizer.range_source
    if source in (RangeSource.OBSERVE, RangeSource.OBSERVE_AND_QUANTIZE):
        raise ExportError(f"{where}: the quantizer is in calibration mode (range_source={source.value!r}); leave calibration_mode before exporting")
    if source in (RangeSource.OBSERVER, RangeSource.FROZEN) and not quantizer.observer.is_initialized:
        raise ExportError(f"{where}: static quantizer was never calibrated (its scale is unknown); run qlayers.calibrate(model, data) before exporting")
    if source is RangeSource.LEARNED:
        if quantizer.learned_range.numel() == 0 and not (quantizer.observer is not None and quantizer.observer.is_initialized):
            if quantizer.observer is not None:
                raise ExportError(f"{where}: learned range never initialised or calibrated; calibrate before exporting")
            return True
        return False
    return source is RangeSource.TENSOR or (source is RangeSource.FIXED and None in tuple(quantizer.float_range))


def _check_dynamic(quantizer: TensorQuantizer, where: str) -> None:
    scaler, kind = quantizer.scaler, quantizer.granularity.kind
    plain_scaler = kind in ("tensor", "token") and (
        (isinstance(scaler, IntScaler) and scaler.symmetric and scaler.power_of_two is None)
        or (isinstance(scaler, FloatScaler) and scaler.power_of_two is None)
    )
    mx = kind == "group" and isinstance(scaler, MXScaler) and scaler.mode == "floor"
    if not (plain_scaler or mx) or quantizer.range_method != "max" or quantizer.float_range is not None:
        raise ExportError(
            f"{where}: dynamic {kind} activation scales with {type(scaler).__name__} (range_method={quantizer.range_method!r}) "
            "cannot be computed exactly with standard ONNX ops (NVFP4 and the CEIL/RCEIL/EVEN MX rules are not "
            f"lowered); supported: {ACTIVATION_SUPPORT}"
        )


def _zero_point_storage(zero_point: torch.Tensor, onnx_name: str) -> torch.Tensor:
    if not bool((zero_point == torch.round(zero_point)).all()):
        raise ExportError(f"zero point {zero_point.tolist()} is not an integer")
    dtype = {"INT8": torch.int8, "UINT8": torch.uint8, "INT16": torch.int16}.get(onnx_name)
    if dtype is None:
        raise ExportError(f"float activations ({onnx_name}) have no zero point in ONNX")
    return zero_point.to(dtype)


def mx_scale(x: torch.Tensor, quantizer: TensorQuantizer) -> torch.Tensor:
    """The OCP MX FLOOR scale ``2^(floor(log2(amax)) - emax_elem)`` of every block of ``x``, with
    ops ONNX has (the ONNX blocked layout: the group axis holds the blocks).

    qzoo reads ``floor(log2(amax))`` from the float's exponent bits; ONNX before BitCast cannot,
    so ``floor(log2(amax))`` is estimated with ``Log`` and corrected by one step each way against
    ``Pow(2, e)``, which is exact for integer ``e``: ``e - [2^e > amax] + [2^(e+1) <= amax]``.
    Clamped to E8M0's [-127, 127]; an all-zero block gets 2^-127, a block holding NaN/Inf NaN
    (as :func:`quantizers.scaling.block_scales.mx_scale`). MXINT8 divides by 64 (elements k/64)."""
    granularity, fmt = quantizer.granularity, quantizer.fmt
    axis = granularity.resolve_axis(x.ndim)
    amax = granularity.amax(x, keep_nonfinite=True).squeeze(axis + 1)
    usable = torch.isfinite(amax) & (amax > 0)
    safe = torch.where(usable, amax, torch.ones_like(amax))
    exponent = torch.floor(torch.log2(safe))
    exponent = exponent - (torch.pow(2.0, exponent) > safe).float() + (torch.pow(2.0, exponent + 1) <= safe).float()
    integer = isinstance(fmt, IntFormat)
    emax = 0 if integer else element_emax(fmt)
    scale = torch.pow(2.0, torch.clamp(exponent - emax, E8M0_MIN_EXPONENT, E8M0_MAX_EXPONENT))
    scale = torch.where(amax == 0, torch.full_like(scale, 2.0 ** E8M0_MIN_EXPONENT), scale)
    scale = torch.where(torch.isfinite(amax), scale, torch.full_like(scale, float("nan")))
    return scale / 2 ** (fmt.bits - 2) if integer else scale
