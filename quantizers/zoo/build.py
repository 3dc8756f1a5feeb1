"""Building the runtime module of a quantizer class (constructor injection with ``dependencies``).

The quantizer's attributes, resolved in Python's MRO, plus the builder functions below form an
``Injector``; asking it for ``tensor_quantizer`` builds the format, granularity, scaler and
observer the :class:`~quantizers.tensor_quantizer.TensorQuantizer` needs. Every failure comes out
as :class:`QuantizerConfigError` naming the quantizer class, never as a raw ``DependencyError``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

import torch
from dependencies import Injector, value

from ..formats import NAMED_FORMATS, FloatFormat, IntFormat, NumberFormat, get_format
from ..observers import OBSERVERS, EMAMinMaxObserver
from ..formats.rounding import ROUNDING_MODES
from ..scaling.block_scales import MX_SCALE_MODES
from ..scaling.granularity import Granularity
from ..scaling.rules import FULL_RANGE_DIVISORS, POWER_OF_TWO_ROUNDINGS
from ..scaling.scalers import FloatScaler, IntScaler, MXScaler, NVFP4Scaler, UnitScaler
from ..tensor_quantizer import RANGE_METHODS, TensorQuantizer
from .base import Quantizer, QuantizerConfigError, check_attribute_names, resolved_attributes

SCALINGS = ("float", "po2", "e8m0", "nvfp4", "none")
QUANT_TYPES = ("int", "float")
FLOAT_STANDARDS = ("ocp", "fnuz", "ieee", "none")


def _allowed(name: str, given: Any, allowed) -> QuantizerConfigError:
    return QuantizerConfigError(f"{name}={given!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")


@value
def number_format(
    quant_type, element_format, bit_width, signed, narrow_range, exponent_bit_width,
    mantissa_bit_width, exponent_bias, float_standard, saturating,
) -> NumberFormat:
    if element_format is not None:
        try:
            return get_format(element_format)
        except (TypeError, ValueError) as error:
            raise QuantizerConfigError(f"element_format: {error}") from None
    if quant_type not in QUANT_TYPES:
        raise _allowed("quant_type", quant_type, QUANT_TYPES)
    if quant_type == "int":
        if bit_width is None:
            raise QuantizerConfigError("an int quantizer needs bit_width (e.g. bit_width = 8)")
        return IntFormat(bits=bit_width, signed=signed, narrow=narrow_range)
    if exponent_bit_width is None or mantissa_bit_width is None:
        raise QuantizerConfigError(
            "a float quantizer needs exponent_bit_width and mantissa_bit_width: inherit a format "
            "mixin such as Fp8e4m3Mixin, or set element_format"
        )
    total = int(signed) + exponent_bit_width + mantissa_bit_width
    if bit_width is not None and bit_width != total:
        raise QuantizerConfigError(
            f"bit_width={bit_width} contradicts exponent_bit_width={exponent_bit_width} + "
            f"mantissa_bit_width={mantissa_bit_width} + sign = {total}"
        )
    standard = float_standard or "ocp"
    if standard not in FLOAT_STANDARDS:
        raise _allowed("float_standard", float_standard, FLOAT_STANDARDS)
    special, default_bias = _float_special(standard, exponent_bit_width, mantissa_bit_width)
    fmt = FloatFormat(
        exponent_bit_width, mantissa_bit_width,
        default_bias if exponent_bias is None else exponent_bias, special, signed=signed,
        saturating=True if saturating is None else saturating,
    )
    return next((named for named in NAMED_FORMATS.values() if named == fmt), fmt)


def _float_special(standard: str, exponent_bits: int, mantissa_bits: int):
    ieee_bias = 2 ** (exponent_bits - 1) - 1
    if standard == "fnuz":
        return "fnuz", ieee_bias + 1
    if standard == "ieee":
        return "ieee", ieee_bias
    if standard == "none":
        return "none", ieee_bias  # every code finite (Brevitas's Fp8e4m3Mixin alone: max 480)
    if (exponent_bits, mantissa_bits) == (4, 3):
        return "fn", ieee_bias  # OCP E4M3
    if (exponent_bits, mantissa_bits) == (5, 2):
        return "ieee", ieee_bias  # OCP E5M2
    return "none", ieee_bias  # OCP MX FP6 / FP4


@value
def granularity_object(granularity, channel_axis, group_size, group_dim, tile_shape, layout_defaults) -> Granularity:
    if granularity == "channel":
        axis = layout_defaults["channel_axis"] if channel_axis is None else channel_axis
    elif granularity in ("group", "token"):
        axis = layout_defaults["group_dim"] if group_dim is None else group_dim
    else:
        axis = 0
    if granularity == "group" and group_size is None:
        raise QuantizerConfigError("granularity='group' needs group_size (e.g. group_size = 32)")
    try:
        return Granularity(
            granularity, axis, group_size if granularity == "group" else None,
            tuple(tile_shape) if granularity == "tile" and tile_shape is not None else None,
        )
    except (TypeError, ValueError) as error:
        raise QuantizerConfigError(str(error)) from None


@value
def scaler_object(scaling, scale_rounding, symmetric, zero_point_formulation, full_range_divisor, number_format):
    if scaling not in SCALINGS:
        raise _allowed("scaling", scaling, SCALINGS)
    if scaling == "none":
        return UnitScaler()
    if scaling == "e8m0":
        if scale_rounding not in (None, *MX_SCALE_MODES):
            raise _allowed("scale_rounding", scale_rounding, MX_SCALE_MODES)
        return MXScaler(number_format, scale_rounding or "floor")
    if scaling == "nvfp4":
        return NVFP4Scaler(number_format)
    if scaling == "po2" and scale_rounding not in (None, *POWER_OF_TWO_ROUNDINGS):
        raise _allowed("scale_rounding", scale_rounding, POWER_OF_TWO_ROUNDINGS)
    power_of_two = (scale_rounding or "ceil") if scaling == "po2" else None
    if isinstance(number_format, IntFormat):
        if zero_point_formulation not in ("zp", "minval"):
            raise _allowed("zero_point_formulation", zero_point_formulation, ("zp", "minval"))
        if full_range_divisor not in FULL_RANGE_DIVISORS:
            raise _allowed("full_range_divisor", full_range_divisor, FULL_RANGE_DIVISORS)
        return IntScaler(number_format, symmetric, zero_point_formulation, power_of_two, full_range_divisor)
    if not symmetric:
        raise QuantizerConfigError("symmetric=False (a zero point) needs an integer format")
    return FloatScaler(number_format, power_of_two)


@value
def observer_object(observer, momentum):
    if observer is None:
        return None
    if observer not in OBSERVERS:
        raise _allowed("observer", observer, [None, *OBSERVERS])
    if OBSERVERS[observer] is EMAMinMaxObserver:
        return EMAMinMaxObserver(momentum)
    return OBSERVERS[observer]()


@value
def tensor_quantizer(
    number_format, granularity_object, scaler_object, range_method, percentile, mse_ratios,
    observer_object, rounding, saturating, float_range,
) -> TensorQuantizer:
    if range_method not in RANGE_METHODS:
        raise _allowed("range_method", range_method, RANGE_METHODS)
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise QuantizerConfigError(f"percentile={percentile!r} must be a number in (0, 100]")
    if rounding is not None and rounding not in ROUNDING_MODES:
        raise _allowed("rounding", rounding, ROUNDING_MODES)
    if float_range is not None:
        if not (isinstance(float_range, (tuple, list)) and len(float_range) == 2 and all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in float_range)):
            raise QuantizerConfigError(f"float_range={float_range!r} must be a (min, max) pair of numbers or None")
        float_range = tuple(None if v is None else float(v) for v in float_range)
    if saturating is False and not (number_format.has_inf or number_format.has_nan):
        raise QuantizerConfigError(
            f"saturating=False needs a format with Inf or NaN for overflow; {number_format.name} has "
            "neither (set saturating=True, or use an OCP/IEEE format)"
        )
    return TensorQuantizer(
        number_format, granularity_object, scaler_object, range_method=range_method,
        percentile=percentile, observer=observer_object,
        mse_ratios=None if mse_ratios is None else torch.tensor(mse_ratios, dtype=torch.float64), rounding=rounding, saturating=saturating,
        float_range=float_range,
    )


_BUILDERS = dict(
    number_format=number_format, granularity_object=granularity_object, scaler_object=scaler_object,
    observer_object=observer_object, tensor_quantizer=tensor_quantizer,
)

_ROLE_LAYOUT = {"weight": {"channel_axis": 0, "group_dim": 1}, "act": {"channel_axis": 1, "group_dim": -1}}


def build_tensor_quantizer(
    quantizer: Type[Quantizer], layout_defaults: Optional[Dict[str, int]] = None, **overrides: Any
) -> TensorQuantizer:
    """The runtime module of ``quantizer`` with ``overrides`` applied.

    ``layout_defaults`` (``{"channel_axis": .., "group_dim": ..}``) fill ``channel_axis`` and
    ``group_dim`` where the quantizer leaves them ``None``; layers pass their own.
    """
    if not (isinstance(quantizer, type) and issubclass(quantizer, Quantizer)):
        raise TypeError(f"expected a quantizer class (a subclass of quantizers.Quantizer), got {quantizer!r}")
    check_attribute_names(quantizer, overrides)
    attributes = {**resolved_attributes(quantizer), **overrides}
    defaults = dict(_ROLE_LAYOUT.get(attributes.get("role"), _ROLE_LAYOUT["weight"]))
    defaults.update(layout_defaults or {})
    namespace = {**attributes, **_BUILDERS, "layout_defaults": defaults}
    try:
        container = type(f"{quantizer.__name__}Injector", (Injector,), namespace)
        return container.tensor_quantizer
    except QuantizerConfigError as error:
        raise QuantizerConfigError(f"{quantizer.__name__}: {error}") from None
    except Exception as error:  # DependencyError and constructor errors, translated
        raise QuantizerConfigError(f"{quantizer.__name__} could not be built: {error}") from error
