"""The named modes of quantizer attributes, as ``str``-valued enums.

Each member equals (and hashes like) its string, so config files, Brevitas-style strings and
existing code keep working: ``Scaling("e8m0") is Scaling.E8M0`` and ``Scaling.E8M0 == "e8m0"``.
The resolved :class:`~quantizers.zoo.attributes.QuantizerAttributes` hold members; the runtime
modules receive plain strings (their ``.value``).
"""
from __future__ import annotations

from enum import Enum

class Mode(str, Enum):
    """Base of the mode enums: a member is interchangeable with its string value."""

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


class Role(Mode):
    """Which tensor a quantizer is for: ``weight``, ``act`` (activation) or ``bias`` (whose scale is
    input scale x weight scale)."""

    WEIGHT = "weight"  # parameters: range from the tensor at every call (cached by layers in eval)
    ACT = "act"  # activations: static (observer) or dynamic ranges
    BIAS = "bias"  # biases at the accumulator's scale, input scale x weight scale


class QuantType(Mode):
    """Element kind when no ``element_format`` is given."""

    INT = "int"
    FLOAT = "float"


class FloatStandard(Mode):
    """Special-value conventions of a minifloat built from its widths."""

    OCP = "ocp"  # E4M3: NaN = S.1111.111, no Inf; E5M2: IEEE; FP6/FP4: no specials
    FNUZ = "fnuz"  # bias 2^(e-1), one zero, NaN = 0x80, no Inf
    IEEE = "ieee"  # IEEE Inf and NaNs
    NONE = "none"  # no reserved codes: every code finite (Brevitas's format mixins without a standard)


class Scaling(Mode):
    """The scale rule (see :mod:`quantizers.scaling.rules` and :mod:`quantizers.scaling.block_scales`)."""

    FLOAT = "float"  # amax / max (or the integer rules)
    PO2 = "po2"  # that scale restricted to a power of two (scale_rounding: floor, ceil, round)
    E8M0 = "e8m0"  # OCP MX shared power-of-two scale stored as E8M0 (floor, rceil, ceil, even)
    NVFP4 = "nvfp4"  # E4M3 block scale x fp32 tensor scale
    NONE = "none"  # scale 1: elements cast to the format directly


class ScaleRounding(Mode):
    """How a power-of-two scale's exponent is rounded."""

    FLOOR = "floor"
    CEIL = "ceil"
    ROUND = "round"
    RCEIL = "rceil"
    EVEN = "even"


SCALE_ROUNDINGS = {
    Scaling.PO2: (ScaleRounding.FLOOR, ScaleRounding.CEIL, ScaleRounding.ROUND),
    Scaling.E8M0: (ScaleRounding.FLOOR, ScaleRounding.RCEIL, ScaleRounding.CEIL, ScaleRounding.EVEN),
}
"""The scale roundings each scaling accepts."""
SCALE_ROUNDING_DEFAULTS = {Scaling.PO2: ScaleRounding.CEIL, Scaling.E8M0: ScaleRounding.FLOOR}
"""The scale rounding of ``scale_rounding=None``: po2 rounds up (never saturating, as Brevitas's
FixedPoint), E8M0 follows OCP MX v1.0 (floor)."""


class GranularityKind(Mode):
    """Which elements share one scale (see :mod:`quantizers.scaling.granularity`)."""

    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"
    TOKEN = "token"
    TILE = "tile"


DYNAMIC_ONLY_GRANULARITIES = (GranularityKind.GROUP, GranularityKind.TOKEN, GranularityKind.TILE)
"""Granularities whose scales depend on the tensor's leading (batch) dimensions: activations with
them take their range from each tensor (``observer=None``), never from a static observer."""


class RangeMethod(Mode):
    """How the range statistic is taken from a tensor."""

    MAX = "max"  # absmax, or (min, max)
    PERCENTILE = "percentile"  # clipped at the percentile-th percentile
    MSE = "mse"  # clipping ratio of least squared quantization error among mse_ratios


class FullRangeDivisor(Mode):
    """The symmetric scale of full-range signed integers ``[-2^(b-1), 2^(b-1) - 1]``."""

    HALF_RANGE = "half_range"  # amax / (2^(b-1) - 0.5) (coreai_opt, MQBench)
    MIN_INT = "min_int"  # amax / 2^(b-1) (Brevitas's IntScaling)


class ZeroPointFormulation(Mode):
    """How an asymmetric integer quantizer stores its offset: ``zp`` (integer zero point,
    ``x = (q - z) s``) or ``minval`` (coreai_opt, ``x = (q - min_int) s + min``)."""

    ZP = "zp"  # integer zero point: x = (q - z) * s
    MINVAL = "minval"  # coreai_opt's MINVAL: x = (q - min_int) * s + min
