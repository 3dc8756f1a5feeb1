"""Mixins: small classes that each set a few quantizer attributes.

Every mixin derives from :class:`Quantizer` directly, so any combination linearises with the root
last and Python's rule holds: the leftmost base that sets an attribute wins.
"""
from __future__ import annotations

from .base import Quantizer

# ---- element formats ----------------------------------------------------------------------------


class IntQuant(Quantizer):
    """Signed integers over the full range ``[-2^(b-1), 2^(b-1) - 1]``; a symmetric scale is
    ``amax / 2^(b-1)`` as in Brevitas (``IntScaling``: the threshold is ``-min_int``)."""

    quant_type = "int"
    signed = True
    narrow_range = False
    full_range_divisor = "min_int"


class NarrowIntQuant(Quantizer):
    """Signed integers over the symmetric range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``."""

    quant_type = "int"
    signed = True
    narrow_range = True


class UintQuant(Quantizer):
    """Unsigned integers ``[0, 2^b - 1]``."""

    quant_type = "int"
    signed = False
    narrow_range = False


class FloatQuant(Quantizer):
    """Minifloat elements; the widths come from a format mixin such as :class:`Fp8e4m3Mixin`."""

    quant_type = "float"


class Fp8e4m3Mixin(Quantizer):
    """FP8 E4M3 elements: 8 bits (1 sign, 4 exponent, 3 mantissa), bias 7, ``v = 2^(e-7) (1 + m/8)``;
    largest value 448 with OCP specials, 480 without (``FpNoSpecialsMixin``), 240 as FNUZ (bias 8)."""

    quant_type = "float"
    bit_width = 8
    exponent_bit_width = 4
    mantissa_bit_width = 3


class Fp8e5m2Mixin(Quantizer):
    """FP8 E5M2 elements: 8 bits (1 sign, 5 exponent, 2 mantissa), bias 15, ``v = 2^(e-15) (1 + m/4)``;
    largest value 57344 with OCP/IEEE specials, 114688 without (``FpNoSpecialsMixin``)."""

    quant_type = "float"
    bit_width = 8
    exponent_bit_width = 5
    mantissa_bit_width = 2


class Fp6e2m3Mixin(Quantizer):
    """FP6 E2M3 elements (OCP MX): 6 bits (1 sign, 2 exponent, 3 mantissa), bias 1, no specials;
    ``v = 2^(e-1) (1 + m/8)``, largest value 7.5."""

    quant_type = "float"
    bit_width = 6
    exponent_bit_width = 2
    mantissa_bit_width = 3


class Fp6e3m2Mixin(Quantizer):
    """FP6 E3M2 elements (OCP MX): 6 bits (1 sign, 3 exponent, 2 mantissa), bias 3, no specials;
    ``v = 2^(e-3) (1 + m/4)``, largest value 28."""

    quant_type = "float"
    bit_width = 6
    exponent_bit_width = 3
    mantissa_bit_width = 2


class Fp4e2m1Mixin(Quantizer):
    """FP4 E2M1 elements (OCP MX, NVFP4): 4 bits (1 sign, 2 exponent, 1 mantissa), bias 1, no
    specials; magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6."""

    quant_type = "float"
    bit_width = 4
    exponent_bit_width = 2
    mantissa_bit_width = 1


class HiFloat8Mixin(Quantizer):
    """HiFloat8 elements (ties-away rounding, saturating at 32768)."""

    quant_type = "float"
    element_format = "hifloat8"


class FpOCPMixin(Quantizer):
    """OCP conventions: E4M3 finite with NaN = S.1111.111 (bias 7), E5M2 IEEE-like (bias 15), FP6/FP4
    with no special values; saturating."""

    float_standard = "ocp"


class FpNoSpecialsMixin(Quantizer):
    """No reserved codes: every code is a finite number (bias ``2^(e-1) - 1``), saturating; what
    Brevitas's format mixins mean without ``FpOCPMixin``/``FpFNUZMixin`` (E4M3 max 480, E5M2 max
    114688)."""

    float_standard = "none"


class FpFNUZMixin(Quantizer):
    """FNUZ conventions (AMD/Graphcore): bias ``2^(e-1)``, one zero, NaN = 0x80, no Inf; saturating."""

    float_standard = "fnuz"


# ---- roles -----------------------------------------------------------------------------------------


class WeightQuant(Quantizer):
    """Weights: statistics from the tensor itself at every call (cached by layers in eval mode)."""

    role = "weight"
    observer = None


class ActQuant(Quantizer):
    """Static activations: the 99.999th percentile of |x| (Brevitas's ``high_percentile_q``),
    averaged over the batches seen in training or calibration."""

    role = "act"
    range_method = "percentile"
    percentile = 99.999
    observer = "mean"


class MaxActQuant(ActQuant):
    """Static activations ranged by the mean over batches of each batch's max |x| (Brevitas's
    scaled float activations: ``ScaledFloatActBase.scaling_stats_op = 'max'``)."""

    range_method = "max"


class DynamicActQuant(Quantizer):
    """Dynamic activations: the range of every tensor is computed when it arrives."""

    role = "act"
    range_method = "max"
    observer = None


class BiasQuant(Quantizer):
    """Biases with scale = input scale x weight scale (needs a quantized input)."""

    role = "bias"
    quant_type = "int"
    signed = True
    narrow_range = False
    requires_input_scale = True


# ---- granularity -----------------------------------------------------------------------------------


class PerTensor(Quantizer):
    """One scale (and zero point) for the whole tensor: ``s`` from the statistic of all its elements."""

    granularity = "tensor"


class PerChannel(Quantizer):
    """One scale per output channel of a weight (``channel_axis`` chosen by the layer)."""

    granularity = "channel"


class PerChannel2d(Quantizer):
    """One scale per channel of an ``(N, C, H, W)`` activation."""

    granularity = "channel"
    channel_axis = 1


class PerGroup(Quantizer):
    """Groups of ``group_size`` along ``group_dim`` (the layer's reduction axis by default)."""

    granularity = "group"


class PerToken(Quantizer):
    """One scale per token (row), computed at run time."""

    granularity = "token"
    observer = None
    range_method = "max"


# ---- scaling ---------------------------------------------------------------------------------------


class FloatScaling(Quantizer):
    """Floating-point scales: ``amax / max`` (or the integer rules)."""

    scaling = "float"


class PowerOfTwoScaling(Quantizer):
    """Scales restricted to powers of two, rounded up (never saturating), as Brevitas's FixedPoint."""

    scaling = "po2"
    scale_rounding = "ceil"


class NoScaling(Quantizer):
    """Scale 1: elements are cast to the format directly."""

    scaling = "none"


class MXScaling(Quantizer):
    """OCP MX: blocks of 32 with a shared E8M0 scale, FLOOR rule by default."""

    granularity = "group"
    group_size = 32
    scaling = "e8m0"
    scale_rounding = "floor"


class NVFP4Scaling(Quantizer):
    """NVFP4: blocks of 16, E4M3 block scales times one fp32 tensor scale."""

    granularity = "group"
    group_size = 16
    scaling = "nvfp4"


class MSERange(Quantizer):
    """Clipping range chosen by a grid search minimising the squared quantization error, over
    Brevitas's ``MSESymmetricScale`` grid: ``amax * k / 20`` for ``k = 1 .. 20`` (``mse_iters = 20``)."""

    range_method = "mse"
    mse_ratios = tuple(k / 20 for k in range(1, 21))
