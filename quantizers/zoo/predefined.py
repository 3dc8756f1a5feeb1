"""The predefined quantizers: Brevitas's names and meanings, plus the formats Brevitas lacks.

A class that shares a name with ``brevitas.quant`` computes what Brevitas 0.13.4 computes (format,
max value, special codes, statistic and scale rule; ``tests/test_brevitas_parity.py`` checks every
one). The one documented exception is :class:`MXInt8Weight`/:class:`MXInt8Act`, which follow the
OCP MXINT8 spec where Brevitas clips the block maximum.

Naming scheme: ``<Type><Bits>[Standard]<Role><Granularity><ScaleKind>[Variant]``.
``python -m quantizers.zoo.catalog`` prints the table of all of them from the classes themselves.
"""
from __future__ import annotations

from .mixins import (
    ActQuant,
    BiasQuant,
    DynamicActQuant,
    FloatQuant,
    FloatScaling,
    Fp4e2m1Mixin,
    Fp6e2m3Mixin,
    Fp6e3m2Mixin,
    Fp8e4m3Mixin,
    Fp8e5m2Mixin,
    FpFNUZMixin,
    FpOCPMixin,
    HiFloat8Mixin,
    FpNoSpecialsMixin,
    IntQuant,
    MaxActQuant,
    MSERange,
    MXScaling,
    NarrowIntQuant,
    NoScaling,
    NVFP4Scaling,
    PerChannel,
    PerChannel2d,
    PerGroup,
    PerTensor,
    PerToken,
    PowerOfTwoScaling,
    UintQuant,
    WeightQuant,
)

# ---- integer, Brevitas names ----------------------------------------------------------------------


class Int8WeightPerTensorFloat(NarrowIntQuant, WeightQuant, PerTensor, FloatScaling):
    """INT8 weights in [-127, 127], one float scale ``amax / 127``."""

    bit_width = 8


class Int8WeightPerChannelFloat(NarrowIntQuant, WeightQuant, PerChannel, FloatScaling):
    """INT8 weights in [-127, 127], one float scale ``amax / 127`` per output channel."""

    bit_width = 8


class Int8ActPerTensorFloat(IntQuant, ActQuant, PerTensor, FloatScaling):
    """INT8 activations in [-128, 127], static per-tensor scale ``amax / 128`` (Brevitas's rule), amax
    the mean over batches of the 99.999th percentile of |x|."""

    bit_width = 8


class Uint8ActPerTensorFloat(UintQuant, ActQuant, PerTensor, FloatScaling):
    """UINT8 activations in [0, 255] (e.g. after ReLU), static per-tensor scale ``amax / 255`` from
    the 99.999th percentile of x."""

    bit_width = 8


class Int8Bias(BiasQuant):
    """INT8 bias with scale = input scale x weight scale."""

    bit_width = 8


class Int16Bias(BiasQuant):
    """INT16 bias with scale = input scale x weight scale."""

    bit_width = 16


class Int32Bias(BiasQuant):
    """INT32 bias with scale = input scale x weight scale (the accumulator's scale)."""

    bit_width = 32


class Int8WeightPerTensorFloatMSE(MSERange, Int8WeightPerTensorFloat):
    """:class:`Int8WeightPerTensorFloat` with an MSE-searched clipping range."""


class Int8WeightPerChannelFloatMSE(MSERange, Int8WeightPerChannelFloat):
    """:class:`Int8WeightPerChannelFloat` with an MSE-searched clipping range per channel."""


class Int8ActPerTensorFloatMSE(MSERange, Int8ActPerTensorFloat):
    """:class:`Int8ActPerTensorFloat` with an MSE-searched range per batch, averaged."""


class Uint8ActPerTensorFloatMSE(MSERange, Uint8ActPerTensorFloat):
    """:class:`Uint8ActPerTensorFloat` with an MSE-searched range per batch, averaged."""


class Int8WeightPerTensorFixedPoint(NarrowIntQuant, WeightQuant, PerTensor, PowerOfTwoScaling):
    """INT8 weights with a power-of-two scale ``2^ceil(log2(amax / 127))``."""

    bit_width = 8


class Int8ActPerTensorFixedPoint(IntQuant, ActQuant, PerTensor, PowerOfTwoScaling):
    """INT8 activations with a static power-of-two scale ``2^ceil(log2(amax / 128))``."""

    bit_width = 8


# ---- integer, new ---------------------------------------------------------------------------------


class Int4WeightPerGroupFloat(NarrowIntQuant, WeightQuant, PerGroup, FloatScaling):
    """INT4 weights in [-7, 7], one float scale per group of 128 input channels (the GPTQ/AWQ
    convention; override with ``weight_group_size``)."""

    bit_width = 4
    group_size = 128


class Uint4WeightPerGroupFloat(UintQuant, WeightQuant, PerGroup, FloatScaling):
    """UINT4 weights in [0, 15] with a scale and an integer zero point per group of 128."""

    bit_width = 4
    group_size = 128
    symmetric = False


class Int2WeightPerGroupFloat(NarrowIntQuant, WeightQuant, PerGroup, FloatScaling):
    """INT2 weights in [-1, 1] (ternary), one float scale per group of 128."""

    bit_width = 2
    group_size = 128


class Int8ActPerTokenFloat(NarrowIntQuant, DynamicActQuant, PerToken, FloatScaling):
    """Dynamic INT8 activations, one scale ``amax / 127`` per token (row)."""

    bit_width = 8


# ---- minifloat, Brevitas names ----------------------------------------------------------------------


class FpOCPWeightPerTensorFloat(FloatQuant, FpOCPMixin, WeightQuant, PerTensor, FloatScaling):
    """OCP minifloat weights, scale ``amax / max``; combine with a format mixin."""


class FpOCPWeightPerChannelFloat(FloatQuant, FpOCPMixin, WeightQuant, PerChannel, FloatScaling):
    """OCP minifloat weights, one scale ``amax / max`` per output channel."""


class FpOCPActPerTensorFloat(FloatQuant, FpOCPMixin, MaxActQuant, PerTensor, FloatScaling):
    """OCP minifloat activations, static per-tensor scale ``amax / max``, amax the mean over
    batches of max |x| (Brevitas 0.13.4's statistic, whatever its docstrings say)."""


class FpOCPActPerChannelFloat2d(FloatQuant, FpOCPMixin, MaxActQuant, PerChannel2d, FloatScaling):
    """OCP minifloat activations of ``(N, C, H, W)`` tensors, static per-channel scale from the
    mean of max |x| per channel."""


class FpFNUZWeightPerTensorFloat(FloatQuant, FpFNUZMixin, WeightQuant, PerTensor, FloatScaling):
    """FNUZ minifloat weights, scale ``amax / max``; combine with a format mixin."""


class FpFNUZWeightPerChannelFloat(FloatQuant, FpFNUZMixin, WeightQuant, PerChannel, FloatScaling):
    """FNUZ minifloat weights, one scale ``s = max|w_c| / max_format`` per output channel ``c``."""


class FpFNUZActPerTensorFloat(FloatQuant, FpFNUZMixin, MaxActQuant, PerTensor, FloatScaling):
    """FNUZ minifloat activations, static per-tensor scale from the mean of max |x|."""


class FpFNUZActPerChannelFloat2d(FloatQuant, FpFNUZMixin, MaxActQuant, PerChannel2d, FloatScaling):
    """FNUZ minifloat activations of ``(N, C, H, W)`` tensors, static per-channel scale."""


class Fp8e4m3OCPWeightPerTensorFloat(Fp8e4m3Mixin, FpOCPWeightPerTensorFloat):
    """OCP FP8 E4M3 weights, per-tensor scale ``amax / 448``."""


class Fp8e4m3OCPWeightPerChannelFloat(Fp8e4m3Mixin, FpOCPWeightPerChannelFloat):
    """OCP FP8 E4M3 weights, per-channel scale ``amax / 448``."""


class Fp8e4m3OCPActPerTensorFloat(Fp8e4m3Mixin, FpOCPActPerTensorFloat):
    """OCP FP8 E4M3 activations, static per-tensor scale ``s = r / 448``,
    ``r`` the calibrated range (mean over batches of each batch's ``max|x|``)."""


class Fp8e4m3OCPActPerChannelFloat2d(Fp8e4m3Mixin, FpOCPActPerChannelFloat2d):
    """OCP FP8 E4M3 activations, static per-channel scale ``s = r / 448``,
    ``r`` the calibrated range (mean over batches of each batch's ``max|x_c|`` per channel ``c``)."""


class Fp8e5m2OCPWeightPerTensorFloat(Fp8e5m2Mixin, FpOCPWeightPerTensorFloat):
    """OCP FP8 E5M2 weights, per-tensor scale ``amax / 57344``."""


class Fp8e5m2OCPWeightPerChannelFloat(Fp8e5m2Mixin, FpOCPWeightPerChannelFloat):
    """OCP FP8 E5M2 weights, per-channel scale ``s = max|w| / 57344``."""


class Fp8e5m2OCPActPerTensorFloat(Fp8e5m2Mixin, FpOCPActPerTensorFloat):
    """OCP FP8 E5M2 activations, static per-tensor scale ``s = r / 57344``,
    ``r`` the calibrated range (mean over batches of each batch's ``max|x|``)."""


class Fp8e5m2OCPActPerChannelFloat2d(Fp8e5m2Mixin, FpOCPActPerChannelFloat2d):
    """OCP FP8 E5M2 activations, static per-channel scale ``s = r / 57344``,
    ``r`` the calibrated range (mean over batches of each batch's ``max|x_c|`` per channel ``c``)."""


class Fp8e4m3FNUZWeightPerTensorFloat(Fp8e4m3Mixin, FpFNUZWeightPerTensorFloat):
    """FNUZ FP8 E4M3 weights, per-tensor scale ``s = max|w| / 240``."""


class Fp8e4m3FNUZWeightPerChannelFloat(Fp8e4m3Mixin, FpFNUZWeightPerChannelFloat):
    """FNUZ FP8 E4M3 weights, per-channel scale ``s = max|w| / 240``."""


class Fp8e4m3FNUZActPerTensorFloat(Fp8e4m3Mixin, FpFNUZActPerTensorFloat):
    """FNUZ FP8 E4M3 activations, static per-tensor scale ``s = r / 240``,
    ``r`` the calibrated range (mean over batches of each batch's ``max|x|``)."""


class Fp8e4m3FNUZActPerChannelFloat2d(Fp8e4m3Mixin, FpFNUZActPerChannelFloat2d):
    """FNUZ FP8 E4M3 activations, static per-channel scale ``s = r / 240``,
    ``r`` the calibrated range (mean over batches of each batch's ``max|x_c|`` per channel ``c``)."""


class Fp8e5m2FNUZWeightPerTensorFloat(Fp8e5m2Mixin, FpFNUZWeightPerTensorFloat):
    """FNUZ FP8 E5M2 weights, per-tensor scale ``s = max|w| / 57344``."""


class Fp8e5m2FNUZWeightPerChannelFloat(Fp8e5m2Mixin, FpFNUZWeightPerChannelFloat):
    """FNUZ FP8 E5M2 weights, per-channel scale ``s = max|w| / 57344``."""


class Fp8e5m2FNUZActPerTensorFloat(Fp8e5m2Mixin, FpFNUZActPerTensorFloat):
    """FNUZ FP8 E5M2 activations, static per-tensor scale ``s = r / 57344``,
    ``r`` the calibrated range (mean over batches of each batch's ``max|x|``)."""


class Fp8e5m2FNUZActPerChannelFloat2d(Fp8e5m2Mixin, FpFNUZActPerChannelFloat2d):
    """FNUZ FP8 E5M2 activations, static per-channel scale ``s = r / 57344``,
    ``r`` the calibrated range (mean over batches of each batch's ``max|x_c|`` per channel ``c``)."""


class Fp8e4m3OCPActPerTokenFloat(Fp8e4m3Mixin, FloatQuant, FpOCPMixin, DynamicActQuant, PerToken, FloatScaling):
    """Dynamic OCP FP8 E4M3 activations, one scale ``amax / 448`` per token."""


class Fp8e4m3Weight(Fp8e4m3Mixin, FpNoSpecialsMixin, WeightQuant, NoScaling):
    """FP8 E4M3 weights with no special codes (bias 7, max 480, as Brevitas), cast without scaling.
    The OCP format (max 448, NaN code) is :class:`Fp8e4m3OCPWeight`."""


class Fp8e5m2Weight(Fp8e5m2Mixin, FpNoSpecialsMixin, WeightQuant, NoScaling):
    """FP8 E5M2 weights with no special codes (bias 15, max 114688, as Brevitas), cast without
    scaling. The OCP format (max 57344, Inf and NaN) is :class:`Fp8e5m2OCPWeight`."""


class Fp8e4m3Act(Fp8e4m3Mixin, FpNoSpecialsMixin, DynamicActQuant, NoScaling):
    """FP8 E4M3 activations with no special codes (max 480, as Brevitas), cast without scaling."""


class Fp8e5m2Act(Fp8e5m2Mixin, FpNoSpecialsMixin, DynamicActQuant, NoScaling):
    """FP8 E5M2 activations with no special codes (max 114688, as Brevitas), cast without scaling."""


class Fp8e4m3OCPWeight(Fp8e4m3Mixin, FpOCPMixin, WeightQuant, NoScaling):
    """OCP FP8 E4M3 weights (``float8_e4m3fn``, max 448) cast without scaling."""


class Fp8e5m2OCPWeight(Fp8e5m2Mixin, FpOCPMixin, WeightQuant, NoScaling):
    """OCP FP8 E5M2 weights (``float8_e5m2``, max 57344) cast without scaling."""


class Fp8e4m3OCPAct(Fp8e4m3Mixin, FpOCPMixin, DynamicActQuant, NoScaling):
    """OCP FP8 E4M3 activations cast without scaling (``s = 1``): ``x`` rounded onto the
    format's grid, saturating at ±448."""


class Fp8e5m2OCPAct(Fp8e5m2Mixin, FpOCPMixin, DynamicActQuant, NoScaling):
    """OCP FP8 E5M2 activations cast without scaling (``s = 1``): ``x`` rounded onto the
    format's grid, saturating at ±57344."""


class Fp8e4m3FNUZWeight(Fp8e4m3Mixin, FpFNUZMixin, WeightQuant, NoScaling):
    """FNUZ FP8 E4M3 weights (``float8_e4m3fnuz``, max 240) cast without scaling."""


class Fp8e5m2FNUZWeight(Fp8e5m2Mixin, FpFNUZMixin, WeightQuant, NoScaling):
    """FNUZ FP8 E5M2 weights (``float8_e5m2fnuz``, max 57344) cast without scaling."""


class Fp8e4m3FNUZAct(Fp8e4m3Mixin, FpFNUZMixin, DynamicActQuant, NoScaling):
    """FNUZ FP8 E4M3 activations cast without scaling (``s = 1``): ``x`` rounded onto the
    format's grid, saturating at ±240."""


class Fp8e5m2FNUZAct(Fp8e5m2Mixin, FpFNUZMixin, DynamicActQuant, NoScaling):
    """FNUZ FP8 E5M2 activations cast without scaling (``s = 1``): ``x`` rounded onto the
    format's grid, saturating at ±57344."""


# ---- OCP MX and NVFP4 -------------------------------------------------------------------------------


class MXFloat8e4m3Weight(Fp8e4m3Mixin, FpOCPMixin, WeightQuant, MXScaling):
    """MXFP8 (E4M3) weights: blocks of 32 input channels, E8M0 scale ``2^(floor(log2 amax) - 8)``."""


class MXFloat8e4m3Act(Fp8e4m3Mixin, FpOCPMixin, DynamicActQuant, MXScaling):
    """MXFP8 (E4M3) activations, dynamic, blocks of 32 along the layer's reduction axis."""


class MXFloat8e4m3WeightMSE(MSERange, MXFloat8e4m3Weight):
    """MXFP8 (E4M3) weights with an MSE-searched block maximum."""


class MXFloat8e5m2Weight(Fp8e5m2Mixin, FpOCPMixin, WeightQuant, MXScaling):
    """MXFP8 (E5M2) weights: blocks of 32 input channels, E8M0 scale ``2^(floor(log2 amax) - 15)``."""


class MXFloat8e5m2Act(Fp8e5m2Mixin, FpOCPMixin, DynamicActQuant, MXScaling):
    """MXFP8 (E5M2) activations, dynamic: blocks of 32 along the reduction axis, E8M0 scale
    ``2^(floor(log2 amax) - 15)`` from each input."""


class MXFloat6e2m3Weight(Fp6e2m3Mixin, FpOCPMixin, WeightQuant, MXScaling):
    """MXFP6 (E2M3) weights: blocks of 32 input channels, E8M0 scale ``2^(floor(log2 amax) - 2)``."""


class MXFloat6e2m3Act(Fp6e2m3Mixin, FpOCPMixin, DynamicActQuant, MXScaling):
    """MXFP6 (E2M3) activations, dynamic: blocks of 32 along the reduction axis, E8M0 scale
    ``2^(floor(log2 amax) - 2)`` from each input."""


class MXFloat6e3m2Weight(Fp6e3m2Mixin, FpOCPMixin, WeightQuant, MXScaling):
    """MXFP6 (E3M2) weights: blocks of 32 input channels, E8M0 scale ``2^(floor(log2 amax) - 4)``."""


class MXFloat6e3m2Act(Fp6e3m2Mixin, FpOCPMixin, DynamicActQuant, MXScaling):
    """MXFP6 (E3M2) activations, dynamic: blocks of 32 along the reduction axis, E8M0 scale
    ``2^(floor(log2 amax) - 4)`` from each input."""


class MXFloat4e2m1Weight(Fp4e2m1Mixin, FpOCPMixin, WeightQuant, MXScaling):
    """MXFP4 (E2M1) weights: blocks of 32 input channels, E8M0 scale ``2^(floor(log2 amax) - 2)``."""


class MXFloat4e2m1Act(Fp4e2m1Mixin, FpOCPMixin, DynamicActQuant, MXScaling):
    """MXFP4 (E2M1) activations, dynamic: blocks of 32 along the reduction axis, E8M0 scale
    ``2^(floor(log2 amax) - 2)`` from each input."""


class MXInt8Weight(NarrowIntQuant, WeightQuant, MXScaling):
    """OCP MXINT8 weights: elements k/64 with |k| <= 127, scale ``2^floor(log2 amax)``
    (the spec, unlike Brevitas 0.13.4, whose grid is one bit finer and clips the block maximum)."""

    bit_width = 8


class MXInt8Act(NarrowIntQuant, DynamicActQuant, MXScaling):
    """OCP MXINT8 activations, dynamic: elements k/64 with |k| <= 127, blocks of 32 along the
    reduction axis, scale ``2^floor(log2 amax)`` from each input."""

    bit_width = 8


class NVFloat4e2m1Weight(Fp4e2m1Mixin, FpOCPMixin, WeightQuant, NVFP4Scaling):
    """NVFP4 weights: FP4 E2M1 elements, blocks of 16 with an E4M3 scale times an fp32 tensor scale."""


class NVFloat4e2m1Act(Fp4e2m1Mixin, FpOCPMixin, DynamicActQuant, NVFP4Scaling):
    """NVFP4 activations, dynamic: FP4 E2M1 elements, blocks of 16 with an E4M3 scale times an fp32
    tensor scale, both from each input."""


# ---- HiFloat8 ---------------------------------------------------------------------------------------

_HIF8_POWER_OF_TWO_CANDIDATES = tuple(2.0 ** k for k in range(17))  # scale = amax * 2^k / 32768


class HiFloat8WeightPerTensorFloat(HiFloat8Mixin, MSERange, WeightQuant, PerTensor, PowerOfTwoScaling):
    """HiFloat8 weights with the power-of-two per-tensor scale of least squared error.

    HiF8's precision tapers (3 mantissa bits only for |e| <= 3), so mapping amax onto 32768 as for
    FP8 throws precision away. The search tries 17 scales placing amax at 2^15 .. 2^-1 (AMCT's OFMR
    searches a similar power-of-two range against the layer output)."""

    mse_ratios = _HIF8_POWER_OF_TWO_CANDIDATES


class HiFloat8ActPerTensorFloat(HiFloat8Mixin, MSERange, ActQuant, PerTensor, PowerOfTwoScaling):
    """HiFloat8 activations: the least-error power-of-two scale of each batch, averaged."""

    mse_ratios = _HIF8_POWER_OF_TWO_CANDIDATES
