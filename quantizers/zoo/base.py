"""The root of every quantizer class, its attribute vocabulary, overrides and ``describe``.

A quantizer is a plain Python class whose class attributes describe it. Mixins set a few
attributes each, and attributes resolve in Python's MRO (leftmost base wins), so::

    class OCPFP8Weight(FpOCPWeightPerTensorFloat, Fp8e4m3Mixin):
        pass

reads the format from ``Fp8e4m3Mixin`` and the scaling from ``FpOCPWeightPerTensorFloat``.
Defaults live only on :class:`Quantizer`, the one base every mixin shares, so a default can never
shadow a mixin that comes later in the MRO.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, List, Tuple, Type


class QuantizerConfigError(ValueError):
    """A quantizer class is missing an attribute or holds contradictory ones."""


class Quantizer:
    """Root quantizer: every attribute a quantizer may set, with its default.

    Element format
        ``quant_type`` ``"int"`` or ``"float"``; ``element_format`` (a format name or object; wins
        over the rest), ``bit_width``, ``signed``, ``narrow_range``, ``exponent_bit_width``,
        ``mantissa_bit_width``, ``exponent_bias``, ``float_standard`` (``"ocp"``, ``"fnuz"``,
        ``"ieee"``, ``"none"``: no Inf/NaN codes, as Brevitas's format mixins without a standard
        mixin; ``None``: OCP), ``saturating`` and ``rounding`` (``None``: the format's defaults).
    Scaling
        ``scaling``: ``"float"`` (amax over the format's max, or the integer rules), ``"po2"``
        (that scale restricted to a power of two), ``"e8m0"`` (OCP MX shared scales), ``"nvfp4"``
        (E4M3 block x fp32 tensor scale) or ``"none"``; ``scale_rounding`` (po2: floor/ceil/round;
        e8m0: floor/rceil/ceil/even); ``symmetric``; ``zero_point_formulation`` (``"zp"`` or
        coreai_opt's ``"minval"``); ``full_range_divisor`` for symmetric full-range signed
        integers (``"half_range"``: amax / (2^(b-1) - 0.5); ``"min_int"``: Brevitas's amax / 2^(b-1)).
    Granularity
        ``granularity`` (``"tensor"``, ``"channel"``, ``"group"``, ``"token"``, ``"tile"``),
        ``channel_axis``, ``group_size``, ``group_dim`` (``None``: chosen by the layer),
        ``tile_shape`` (2-D blocks over dims 0 and 1 for ``"tile"``, default 128 x 128).
    Range
        ``range_method`` (``"max"``, ``"percentile"``, ``"mse"``), ``percentile``, ``mse_ratios``
        (clipping ratios the MSE search tries; default 36 ratios from 0.3 to 1), ``float_range``
        (fixed ``(min, max)`` ends overriding the statistics, either may be ``None``);
        ``observer`` (``None``: statistics from every tensor; ``"minmax"``, ``"global_minmax"``,
        ``"ema_minmax"``, ``"mean"``: static activation ranges) and ``momentum``.
    Role
        ``role``: ``"weight"``, ``"act"`` or ``"bias"``; ``requires_input_scale`` for biases
        whose scale is input scale x weight scale.
    """

    role = "weight"
    quant_type = "int"
    element_format = None
    bit_width = None
    signed = True
    narrow_range = False
    exponent_bit_width = None
    mantissa_bit_width = None
    exponent_bias = None
    float_standard = None
    saturating = None
    rounding = None
    scaling = "float"
    scale_rounding = None
    symmetric = True
    zero_point_formulation = "zp"
    full_range_divisor = "half_range"
    granularity = "tensor"
    channel_axis = None
    group_size = None
    group_dim = None
    tile_shape = (128, 128)
    range_method = "max"
    percentile = 99.999
    mse_ratios = None
    float_range = None
    observer = None
    momentum = 0.1
    requires_input_scale = False

    @classmethod
    def with_overrides(cls, **overrides: Any) -> Type["Quantizer"]:
        """A subclass with ``overrides`` applied; unknown names raise ``TypeError``."""
        if not overrides:
            return cls
        check_attribute_names(cls, overrides)
        return type(cls.__name__, (cls,), dict(overrides))


def attribute_names(quantizer: Type[Quantizer]) -> List[str]:
    """Every attribute a quantizer class can set: the root vocabulary plus public data attributes
    that its own classes add."""
    names: Dict[str, None] = {}
    for klass in reversed(quantizer.__mro__):
        for name, value in vars(klass).items():
            if not name.startswith("_") and not callable(value) and not isinstance(value, (classmethod, staticmethod, property)):
                names[name] = None
    return list(names)


def check_attribute_names(quantizer: Type[Quantizer], overrides: Dict[str, Any], prefix: str = "") -> None:
    """Raise ``TypeError`` for override names the quantizer does not know, suggesting close ones."""
    known = attribute_names(quantizer)
    for name in overrides:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise TypeError(f"unknown quantizer override {prefix + name!r} for {quantizer.__name__}{hint}")


def resolved_attributes(quantizer: Type[Quantizer]) -> Dict[str, Any]:
    """``{name: value}`` for every attribute, resolved in Python's MRO."""
    return {name: getattr(quantizer, name) for name in attribute_names(quantizer)}


def attribute_sources(quantizer: Type[Quantizer]) -> Dict[str, Tuple[Any, str]]:
    """``{name: (value, defining class name)}``, the class being the first in the MRO defining it."""
    sources = {}
    for name in attribute_names(quantizer):
        owner = next(k for k in quantizer.__mro__ if name in vars(k))
        sources[name] = (getattr(quantizer, name), owner.__name__)
    return sources


def describe(quantizer: Type[Quantizer]) -> str:
    """A table of the quantizer's resolved attributes and the class each comes from."""
    if not (isinstance(quantizer, type) and issubclass(quantizer, Quantizer)):
        raise TypeError(f"describe() takes a quantizer class, got {quantizer!r}")
    rows = attribute_sources(quantizer)
    width = max(len(n) for n in rows)
    lines = [f"{quantizer.__name__}:"]
    for name, (value, owner) in rows.items():
        value_text = getattr(value, "name", None) if not isinstance(value, (str, int, float, bool, type(None))) else None
        lines.append(f"  {name:<{width}} = {value_text or repr(value):<22} # from {owner}")
    return "\n".join(lines)
