"""The declared quantizer attributes: every attribute a quantizer class may set, in one place.

:class:`QuantizerAttributes` is a frozen dataclass with one field per attribute. Each field
declares its default, the values it allows, the quantizers it applies to and a one-line doc
(``fields(QuantizerAttributes)[i].metadata``); :func:`attribute_table` lists them, and
``docs/quantizers.md`` is generated from that table. Constructing the object validates it:

1. each value is checked on its own and normalised (mode strings become the enums of
   :mod:`quantizers.zoo.modes`, lists become tuples);
2. an attribute set to anything but its default where it does not apply (``group_size`` on a
   per-channel quantizer, ``percentile`` with ``range_method="max"``) is rejected;
3. the combination is checked (a float format needs its widths, ``saturating=False`` needs Inf or
   NaN, a static observer needs a granularity whose scales do not depend on the batch, ...) and
   the element format is built (:attr:`QuantizerAttributes.number_format`).

Every failure is a :class:`QuantizerConfigError` (a ``ValueError``; wrong types also a
``TypeError``) naming the attribute, the value and the allowed values. The zoo's classes
(:class:`~quantizers.zoo.base.Quantizer`) resolve to this object, and the builder
(:mod:`quantizers.zoo.build`) reads only this object.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..formats import NumberFormat
from ..observers import OBSERVERS, EMAMinMaxObserver
from . import checks
from .element import element_format_of
from .errors import QuantizerAttributeTypeError, QuantizerConfigError
from .modes import (
    DYNAMIC_ONLY_GRANULARITIES,
    SCALE_ROUNDINGS,
    FloatStandard,
    FullRangeDivisor,
    GranularityKind,
    Mode,
    QuantType,
    RangeMethod,
    Role,
    Scaling,
    ScaleRounding,
    ZeroPointFormulation,
)


# ---- where an attribute applies ----------------------------------------------------------------------
@dataclass(frozen=True)
class AppliesTo:
    """``test(attributes)`` says whether an attribute applies; ``text`` says when, in words.
    ``strict``: a value other than the default where it does not apply is an error (layout
    attributes, which describe the tensor rather than the quantization, are not strict: layers
    and generic code pass both axes to every quantizer)."""

    text: str
    test: Callable[["QuantizerAttributes"], bool]
    names: Tuple[str, ...]
    strict: bool = True


def _when(name: str, *values: Mode, strict: bool = True) -> AppliesTo:
    text = f"{name}={values[0].value!r}" if len(values) == 1 else f"{name} in ({', '.join(repr(v.value) for v in values)})"
    return AppliesTo(text, lambda a: getattr(a, name) in values, (name,), strict)


def _ema(attributes: "QuantizerAttributes") -> bool:
    observer = observer_class(attributes.observer)
    return observer is not None and issubclass(observer, EMAMinMaxObserver)


def _static_range(attributes: "QuantizerAttributes") -> bool:
    own_range = attributes.role is Role.WEIGHT or (attributes.role is Role.ACT and attributes.observer is not None)
    return attributes.scaling is Scaling.FLOAT and own_range


def is_full_range_int(a: "QuantizerAttributes") -> bool:
    """Whether the elements are symmetric full-range signed ints (where ``full_range_divisor`` applies)."""
    integer = a.element_format is None and a.quant_type is QuantType.INT
    return integer and a.signed and not a.narrow_range and a.symmetric and a.scaling in (Scaling.FLOAT, Scaling.PO2)


def attribute(default: Any, check: checks.Check, doc: str, applies: Optional[AppliesTo] = None) -> Any:
    """A field of :class:`QuantizerAttributes` with its check, applicability and doc."""
    return field(default=default, metadata={"check": check, "doc": doc, "applies": applies})


_NOT_BIAS = AppliesTo("role in ('weight', 'act')", lambda a: a.role is not Role.BIAS, ("role",))


# ---- the schema ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizerAttributes:
    """Every quantizer attribute, validated (see the module docstring). Build it from a quantizer
    class with :func:`quantizers.resolve_attributes`."""

    role: Role = attribute(Role.WEIGHT, checks.mode(Role), "which tensor: weight, act (activation) or bias (scale = input scale x weight scale)")
    quant_type: QuantType = attribute(QuantType.INT, checks.mode(QuantType), "element kind built from the widths below when element_format is None")
    element_format: Any = attribute(None, checks.optional(checks.element_format()), "the element format by name or object; wins over quant_type and the widths")
    bit_width: Optional[int] = attribute(None, checks.optional(checks.integer(1)), "bits per element (ints: required; floats: must equal sign + exponent + mantissa)")
    signed: bool = attribute(True, checks.boolean(), "signed elements")
    narrow_range: bool = attribute(False, checks.boolean(), "signed ints in [-(2^(b-1) - 1), 2^(b-1) - 1] instead of [-2^(b-1), 2^(b-1) - 1]", _when("quant_type", QuantType.INT))
    exponent_bit_width: Optional[int] = attribute(None, checks.optional(checks.integer(0)), "minifloat exponent bits", _when("quant_type", QuantType.FLOAT))
    mantissa_bit_width: Optional[int] = attribute(None, checks.optional(checks.integer(0)), "minifloat mantissa bits", _when("quant_type", QuantType.FLOAT))
    exponent_bias: Optional[int] = attribute(None, checks.optional(checks.integer()), "minifloat exponent bias (None: the standard's)", _when("quant_type", QuantType.FLOAT))
    float_standard: Optional[FloatStandard] = attribute(None, checks.optional(checks.mode(FloatStandard)), "minifloat special values: ocp (default), fnuz, ieee or none (every code finite)", _when("quant_type", QuantType.FLOAT))
    saturating: Optional[bool] = attribute(None, checks.optional(checks.boolean()), "overflow to +-max (True) or to Inf/NaN (False); None: the format's default")
    rounding: Optional[str] = attribute(None, checks.optional(checks.rounding_mode()), "element rounding mode; None: the format's default (RNE; HiFloat8: ties away)")
    scaling: Any = attribute(Scaling.FLOAT, checks.scaling_rule(), "the scale rule: float, po2, e8m0 (OCP MX), nvfp4, none, or a Scaler subclass", _NOT_BIAS)
    scale_rounding: Optional[ScaleRounding] = attribute(None, checks.optional(checks.mode(ScaleRounding)), "exponent rounding of power-of-two scales (po2: floor, ceil, round; e8m0: floor, rceil, ceil, even); None: ceil for po2, floor for e8m0", _when("scaling", Scaling.PO2, Scaling.E8M0))
    symmetric: bool = attribute(True, checks.boolean(), "symmetric range; False: integer elements with a zero point", _when("scaling", Scaling.FLOAT, Scaling.PO2))
    full_range_divisor: FullRangeDivisor = attribute(FullRangeDivisor.HALF_RANGE, checks.mode(FullRangeDivisor), "symmetric scale of full-range signed ints: half_range amax / (2^(b-1) - 0.5), min_int amax / 2^(b-1) (Brevitas)", AppliesTo("symmetric signed full-range ints (narrow_range=False) with scaling in ('float', 'po2')", is_full_range_int, ("quant_type", "signed", "narrow_range", "symmetric", "scaling"), strict=False))
    zero_point_formulation: ZeroPointFormulation = attribute(ZeroPointFormulation.ZP, checks.mode(ZeroPointFormulation), "asymmetric scheme: zp (integer zero point) or minval (coreai_opt)", AppliesTo("symmetric=False", lambda a: not a.symmetric, ("symmetric",)))
    granularity: GranularityKind = attribute(GranularityKind.TENSOR, checks.mode(GranularityKind), "which elements share a scale: tensor, channel, group, token or tile", _NOT_BIAS)
    channel_axis: Optional[int] = attribute(None, checks.optional(checks.integer()), "the channel dimension; None: the layer's (weights 0, activations 1)", _when("granularity", GranularityKind.CHANNEL, strict=False))
    group_size: Optional[int] = attribute(None, checks.optional(checks.integer(1)), "elements per group (OCP MX 32, NVFP4 16, int groups 128)", _when("granularity", GranularityKind.GROUP))
    group_dim: Optional[int] = attribute(None, checks.optional(checks.integer()), "the dimension grouped or reduced per token; None: the layer's reduction axis", _when("granularity", GranularityKind.GROUP, GranularityKind.TOKEN, strict=False))
    tile_shape: Tuple[int, int] = attribute((128, 128), checks.int_pair(), "2-D blocks over dims 0 and 1", _when("granularity", GranularityKind.TILE))
    range_method: RangeMethod = attribute(RangeMethod.MAX, checks.mode(RangeMethod), "range statistic: max (absmax or min/max), percentile or mse (clipping search)", _NOT_BIAS)
    percentile: float = attribute(99.999, checks.number(0, 100), "the percentile of |x| (or of x's tails) the range clips at", _when("range_method", RangeMethod.PERCENTILE))
    mse_ratios: Optional[Tuple[float, ...]] = attribute(None, checks.optional(checks.ratios()), "candidate multiples of the statistic the MSE search tries; None: 36 ratios from 0.3 to 1", _when("range_method", RangeMethod.MSE))
    float_range: Optional[Tuple[Optional[float], Optional[float]]] = attribute(None, checks.optional(checks.float_range_pair()), "fixed (min, max) ends of the range overriding the statistics (coreai_opt)", AppliesTo("role in ('weight', 'act') with a scaling other than 'none'", lambda a: a.role is not Role.BIAS and a.scaling is not Scaling.NONE, ("role", "scaling")))
    observer: Any = attribute(None, checks.optional(checks.observer_kind()), "static activation ranges aggregated over batches; None: the range of every tensor (dynamic)", _when("role", Role.ACT))
    momentum: float = attribute(0.1, checks.number(0, 1), "EMA weight of the new batch: s <- (1 - m) s + m s_batch", AppliesTo("an EMA observer (observer='ema_minmax')", _ema, ("observer",)))
    learned_scale: bool = attribute(False, checks.boolean(), "learn the range (LSQ-style) in QAT, starting from the statistic", AppliesTo("scaling='float' and a static range (weights, or activations with an observer)", _static_range, ("scaling", "role", "observer")))
    requires_input_scale: bool = attribute(False, checks.boolean(), "True for biases: their scale is input scale x weight scale", _when("role", Role.BIAS))

    def __post_init__(self) -> None:
        for f in _FIELDS:
            object.__setattr__(self, f.name, _checked(f, getattr(self, f.name)))
        for f in _FIELDS:
            applies: Optional[AppliesTo] = f.metadata["applies"]
            value = getattr(self, f.name)
            if applies is not None and applies.strict and value != f.default and not applies.test(self):
                raise QuantizerConfigError(
                    f"{f.name}={_text(value)} does not apply here: {f.name} is used only with {applies.text}, "
                    f"and this quantizer has {_context(self, applies)}; allowed here: {_text(f.default)} (remove it)",
                    f.name,
                )
        _check_combination(self)
        object.__setattr__(self, "_number_format", element_format_of(self))

    @property
    def number_format(self) -> NumberFormat:
        """The element format these attributes describe."""
        return self._number_format  # type: ignore[attr-defined]

    def replace(self, **changes: Any) -> "QuantizerAttributes":
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def with_layout(self, channel_axis: Optional[int], group_dim: Optional[int]) -> "QuantizerAttributes":
        """``channel_axis`` / ``group_dim`` filled in where they apply and are ``None`` (a layer's
        layout: where its tensor's channels and reduction axis lie)."""
        changes = {}
        if self.granularity is GranularityKind.CHANNEL and self.channel_axis is None:
            changes["channel_axis"] = channel_axis
        if self.granularity in (GranularityKind.GROUP, GranularityKind.TOKEN) and self.group_dim is None:
            changes["group_dim"] = group_dim
        return self.replace(**changes) if changes else self


_FIELDS = fields(QuantizerAttributes)
ATTRIBUTE_NAMES: Tuple[str, ...] = tuple(f.name for f in _FIELDS)
"""Every attribute name a quantizer class may set, in the schema's order."""


def attribute_table() -> List[Dict[str, str]]:
    """One row per attribute: ``name``, ``default``, ``allowed``, ``applies`` and ``doc``."""
    return [
        {
            "name": f.name, "default": repr(_plain(f.default)), "allowed": f.metadata["check"].allowed,
            "applies": _applies_text(f.metadata["applies"]), "doc": f.metadata["doc"],
        }
        for f in fields(QuantizerAttributes)
    ]


def _applies_text(applies: Optional[AppliesTo]) -> str:
    if applies is None:
        return "every quantizer"
    return applies.text if applies.strict else f"{applies.text} (ignored otherwise)"


def observer_class(observer: Union[None, str, type]) -> Optional[type]:
    """The :class:`~quantizers.observers.Observer` class an ``observer`` attribute names."""
    if observer is None or isinstance(observer, type):
        return observer
    return OBSERVERS[observer]


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Mode) else value


def _checked(f: dataclasses.Field, value: Any) -> Any:
    check: checks.Check = f.metadata["check"]
    try:
        return check.normalise(value)
    except checks.Invalid as invalid:
        error = QuantizerAttributeTypeError if invalid.wrong_type else QuantizerConfigError
        raise error(f"{f.name}={value!r} is not allowed; allowed values: {check.allowed}", f.name) from None


def _context(attributes: QuantizerAttributes, applies: AppliesTo) -> str:
    return ", ".join(f"{n}={_text(getattr(attributes, n))}" for n in applies.names)


def _text(value: Any) -> str:
    if isinstance(value, type):
        return value.__name__
    return repr(_plain(value))


def _check_combination(a: QuantizerAttributes) -> None:
    """Rules across attributes (each names the attributes and says how to fix it)."""
    if a.role is Role.BIAS:
        if a.quant_type is not QuantType.INT or a.element_format is not None:
            raise QuantizerConfigError(
                "a bias at input scale x weight scale needs integer elements (quant_type='int' and "
                f"bit_width), got quant_type={a.quant_type.value!r}, element_format={a.element_format!r}", "quant_type",
            )
        if not a.requires_input_scale:
            raise QuantizerConfigError(
                "role='bias' means scale = input scale x weight scale and needs requires_input_scale=True; "
                "a bias quantizer with its own scale is a weight quantizer (role='weight')", "requires_input_scale",
            )
    if a.scale_rounding is not None and a.scaling in SCALE_ROUNDINGS and a.scale_rounding not in SCALE_ROUNDINGS[a.scaling]:
        allowed = ", ".join(r.value for r in SCALE_ROUNDINGS[a.scaling])
        raise QuantizerConfigError(
            f"scale_rounding={a.scale_rounding.value!r} is not allowed with scaling={a.scaling.value!r}; allowed values: {allowed}",
            "scale_rounding",
        )
    if not a.symmetric and (a.element_format is not None or a.quant_type is not QuantType.INT):
        raise QuantizerConfigError("symmetric=False (a zero point) needs an integer format; allowed here: True", "symmetric")
    if a.granularity is GranularityKind.GROUP and a.group_size is None:
        raise QuantizerConfigError("granularity='group' needs group_size (e.g. group_size = 32)", "group_size")
    if a.observer is not None and a.granularity in DYNAMIC_ONLY_GRANULARITIES:
        raise QuantizerConfigError(
            f"observer={_plain(a.observer)!r} (a static range) is not allowed with granularity="
            f"{a.granularity.value!r}: its scales follow each tensor's rows and blocks, so ranges "
            "calibrated on some batches do not fit others; use dynamic quantization (observer=None, "
            "e.g. a DynamicActQuant class such as Int8ActPerTokenFloat or MXFloat8e4m3Act)", "observer",
        )


__all__ = [
    "QuantizerAttributes", "QuantizerConfigError", "QuantizerAttributeTypeError", "ATTRIBUTE_NAMES",
    "attribute_table", "observer_class",
]
