"""Declarative tensor specs: a small dict that resolves to a quantizer CLASS built from the zoo's
mixins, exactly as a user would write it by hand.

    >>> spec_to_quantizer({"format": "int8", "granularity": "channel"}, role="weight")
    <class 'qlayers.model.spec.Int8WeightPerChannelFloat'>

resolves to ``type(name, (NarrowIntQuant, WeightQuant, PerChannel, FloatScaling), {"bit_width": 8,
...})``, whose attributes equal those of :class:`quantizers.Int8WeightPerChannelFloat`; the two
paths cannot drift because both are just mixins.

Keys (all but ``format`` optional):

``format``
    any :func:`quantizers.get_format` name (``"int4"``, ``"int8"``, ``"uint8"``, ``"float8_e4m3fn"``,
    ``"float8_e5m2"``, ``"hifloat8"``, ...) or a block format: ``"mxfp8"`` (= ``mxfp8_e4m3``),
    ``"mxfp8_e5m2"``, ``"mxfp6"`` (= ``mxfp6_e2m3``), ``"mxfp6_e3m2"``, ``"mxfp4"``, ``"mxint8"``,
    ``"nvfp4"``. Biases also accept ``"int32"``.
``granularity``
    ``"tensor"`` (default), ``"channel"``, ``"group"`` / ``"block"`` (default for block formats),
    ``"token"`` (dynamic activations); ``group_size`` (block formats: 32, NVFP4: 16, other groups: 128), ``group_dim``,
    ``channel_axis`` (default: the layer's layout).
``symmetric`` (True), ``narrow``
    integer range; ``narrow`` defaults to True for symmetric signed weights and dynamic activations
    ([-127, 127], Brevitas and the zoo) and False for static activations ([-128, 127]). ``formulation``: ``"zp"`` or ``"minval"`` (asymmetric).
    ``full_range_divisor``: the symmetric full-range scale, ``"min_int"`` (default, Brevitas:
    amax / 2^(b-1)) or ``"half_range"`` (coreai_opt, MQBench: amax / (2^(b-1) - 0.5)).
``scale``
    ``"float"`` (amax / max), ``"po2"`` (= ``po2_ceil``), ``"po2_floor"``, ``"po2_round"``,
    ``"e8m0_floor"`` (= ``"e8m0"``), ``"e8m0_rceil"``, ``"e8m0_ceil"``, ``"e8m0_even"``, ``"nvfp4"``,
    ``"none"``; biases: ``"accumulator"`` (input scale x weight scale, their default).
``observer``
    activations: ``"percentile"`` (default for integers: mean of per-batch 99.999th percentiles,
    as ``Int8ActPerTensorFloat``), ``"last_batch"`` (alias ``"minmax"``: the latest batch, not torch.ao's
    running min/max), ``"ema_minmax"``, ``"global_minmax"`` (running min/max),
    ``"mean"`` (mean of batch maxima; default for minifloats, as ``Fp8e4m3OCPActPerTensorFloat``
    and Brevitas's scaled float activations), ``"mse"`` (default for HiFloat8); weights: ``"minmax"`` (default), ``"percentile"``,
    ``"mse"``. ``percentile``, ``momentum`` tune them.
``dynamic``
    activations only: range of each tensor at run time (default for group/token granularity).
``rounding``, ``saturating``
    the element rounding mode (``"even"``, ``"away"``, ...) and overflow policy.
``learned_scale``
    learn the clipping range (LSQ-style) in QAT; needs ``scale="float"``. ``float_range``:
    ``[min, max]`` (either may be None) fixes the range, as coreai_opt's ``float_range``.

HiFloat8 defaults to the zoo's choice: a power-of-two scale picked by an MSE search over 2^k.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Type

from quantizers import (
    ActQuant,
    BiasQuant,
    DynamicActQuant,
    FloatFormat,
    FloatQuant,
    FloatScaling,
    Fp4e2m1Mixin,
    Fp6e2m3Mixin,
    Fp6e3m2Mixin,
    Fp8e4m3Mixin,
    Fp8e5m2Mixin,
    FpFNUZMixin,
    FpOCPMixin,
    HiFloat8,
    HiFloat8Mixin,
    HiFloat8WeightPerTensorFloat,
    IntFormat,
    IntQuant,
    MXScaling,
    NarrowIntQuant,
    NoScaling,
    NVFP4Scaling,
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    PowerOfTwoScaling,
    Quantizer,
    QuantizerConfigError,
    UintQuant,
    WeightQuant,
    get_format,
    known_format_names,
    resolve_attributes,
)

from .errors import bad_type, bad_value, join, unknown_key

SPEC_KEYS = (
    "format", "granularity", "group_size", "group_dim", "channel_axis", "symmetric", "narrow", "scale",
    "observer", "dynamic", "rounding", "percentile", "momentum", "saturating", "formulation",
    "learned_scale", "float_range", "full_range_divisor",
)
ROLES = {"weight": "weight", "bias": "bias", "input": "act", "output": "act", "act": "act"}

BLOCK_FORMATS: Dict[str, Tuple[str, str]] = {
    "mxfp8": ("float8_e4m3fn", "mx"), "mxfp8_e4m3": ("float8_e4m3fn", "mx"), "mxfp8_e4m3fn": ("float8_e4m3fn", "mx"),
    "mxfp8_e5m2": ("float8_e5m2", "mx"),
    "mxfp6": ("float6_e2m3fn", "mx"), "mxfp6_e2m3": ("float6_e2m3fn", "mx"), "mxfp6_e3m2": ("float6_e3m2fn", "mx"),
    "mxfp4": ("float4_e2m1fn", "mx"), "mxfp4_e2m1": ("float4_e2m1fn", "mx"),
    "mxint8": ("int8", "mx"),
    "nvfp4": ("float4_e2m1fn", "nvfp4"),
}
"""Block formats: element format and block scheme (OCP MX: 32 with E8M0; NVFP4: 16 with E4M3 x fp32)."""

_FLOAT_MIXINS = {
    "float8_e4m3fn": (Fp8e4m3Mixin, FpOCPMixin), "float8_e5m2": (Fp8e5m2Mixin, FpOCPMixin),
    "float8_e4m3fnuz": (Fp8e4m3Mixin, FpFNUZMixin), "float8_e5m2fnuz": (Fp8e5m2Mixin, FpFNUZMixin),
    "float6_e2m3fn": (Fp6e2m3Mixin, FpOCPMixin), "float6_e3m2fn": (Fp6e3m2Mixin, FpOCPMixin),
    "float4_e2m1fn": (Fp4e2m1Mixin, FpOCPMixin), "hifloat8": (HiFloat8Mixin,),
}
_TYPE_NAMES = {
    "float8_e4m3fn": "Fp8e4m3OCP", "float8_e5m2": "Fp8e5m2OCP", "float8_e4m3fnuz": "Fp8e4m3FNUZ",
    "float8_e5m2fnuz": "Fp8e5m2FNUZ", "float6_e2m3fn": "Fp6e2m3", "float6_e3m2fn": "Fp6e3m2",
    "float4_e2m1fn": "Fp4e2m1", "hifloat8": "HiFloat8",
}

GRANULARITIES = ("tensor", "channel", "group", "token", "block")
_GRANULARITY_MIXINS = {"tensor": PerTensor, "channel": PerChannel, "group": PerGroup, "token": PerToken}

SCALES: Dict[str, Tuple[str, Optional[str]]] = {
    "float": ("float", None), "po2": ("po2", "ceil"), "po2_ceil": ("po2", "ceil"), "po2_floor": ("po2", "floor"),
    "po2_round": ("po2", "round"), "e8m0": ("e8m0", "floor"), "e8m0_floor": ("e8m0", "floor"),
    "e8m0_rceil": ("e8m0", "rceil"), "e8m0_ceil": ("e8m0", "ceil"), "e8m0_even": ("e8m0", "even"),
    "nvfp4": ("nvfp4", None), "none": ("none", None),
}
_SCALING_MIXINS = {"float": FloatScaling, "po2": PowerOfTwoScaling, "e8m0": MXScaling, "nvfp4": NVFP4Scaling, "none": NoScaling}
_SCALE_NAMES = {"float": "Float", "po2": "FixedPoint", "e8m0": "", "nvfp4": "", "none": "NoScale"}

STATIC_OBSERVERS = {  # name -> (observer, range_method)
    "percentile": ("mean", "percentile"), "last_batch": ("last_batch", "max"), "minmax": ("last_batch", "max"),
    "ema_minmax": ("ema_minmax", "max"),
    "global_minmax": ("global_minmax", "max"), "mean": ("mean", "max"), "mse": ("mean", "mse"),
}
RANGE_ONLY_OBSERVERS = {"minmax": "max", "percentile": "percentile", "mse": "mse"}
"""Weights and dynamic activations take their range from each tensor: only the range method varies."""

PASS_THROUGH_KEYS = (
    "rounding", "saturating", "percentile", "momentum", "channel_axis", "group_dim", "learned_scale", "float_range",
    "full_range_divisor",
)
"""Spec keys that are quantizer attributes of the same name, validated by the attribute schema."""
ATTRIBUTE_KEYS = {
    "narrow_range": "narrow", "zero_point_formulation": "formulation", "scaling": "scale",
    "scale_rounding": "scale", "range_method": "observer",
}
"""The spec key behind a quantizer attribute whose name differs."""
FORMULATIONS = ("zp", "minval")
_CACHE: Dict[Tuple[Any, ...], Type[Quantizer]] = {}


def format_names() -> Tuple[str, ...]:
    """Every ``format`` a spec accepts."""
    return tuple(known_format_names()) + tuple(BLOCK_FORMATS)


def spec_to_quantizer(spec: Mapping[str, Any], role: str = "weight", path: str = "spec") -> Type[Quantizer]:
    """The quantizer class a declarative ``spec`` describes (see the module docstring).

    ``role`` is ``"weight"``, ``"bias"``, ``"input"``, ``"output"`` or ``"act"``; ``path`` prefixes
    error messages (``"weights"``, ``"layers['fc1'].inputs"``). The same spec and role always give
    the same class object.
    """
    if role not in ROLES:
        raise bad_value("role", role, ROLES)
    if not isinstance(spec, Mapping):
        raise bad_type(path, spec, "a dict (declarative spec)")
    for key in spec:
        if key not in SPEC_KEYS:
            raise unknown_key(path, key, SPEC_KEYS)
    key = (role, tuple(sorted((k, _hashable(v)) for k, v in spec.items())))
    if key not in _CACHE:
        _CACHE[key] = _build(dict(spec), role, path)
    return _CACHE[key]


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value if not isinstance(value, dict) else tuple(sorted(value.items()))


def _build(spec: Dict[str, Any], role: str, path: str) -> Type[Quantizer]:
    kind = ROLES[role]
    fmt_name, fmt, block = _format(spec, kind, path)
    attrs: Dict[str, Any] = {}
    granularity, group_size = _granularity(spec, kind, block, path)
    symmetric, narrow, formulation = _integer_scheme(spec, kind, fmt, block, path)
    scaling, scale_rounding = _scale(spec, kind, fmt, fmt_name, block, granularity, symmetric, path)
    dynamic = _dynamic(spec, kind, block, granularity, path)
    observer, range_method = _observer(spec, kind, dynamic, fmt_name, path)

    if scaling == "accumulator":  # bias at input scale x weight scale
        bases: Tuple[type, ...] = (BiasQuant,)
        attrs.update(bit_width=fmt.bits, signed=fmt.signed, narrow_range=False, granularity=granularity, group_size=group_size)
    else:
        bases = _element_mixins(fmt, fmt_name, narrow)
        bases += (WeightQuant if kind in ("weight", "bias") else DynamicActQuant if dynamic else ActQuant,)
        bases += (_GRANULARITY_MIXINS[granularity], _SCALING_MIXINS[scaling])
        if isinstance(fmt, IntFormat):
            attrs.update(bit_width=fmt.bits, narrow_range=narrow)
        attrs.update(
            granularity=granularity, group_size=group_size, scaling=scaling, scale_rounding=scale_rounding,
            symmetric=symmetric, zero_point_formulation=formulation, observer=observer, range_method=range_method,
        )
        if fmt_name == "hifloat8" and scaling == "po2" and range_method == "mse":
            attrs["mse_ratios"] = HiFloat8WeightPerTensorFloat.mse_ratios
    _pass_through(spec, attrs)
    name = _class_name(fmt, fmt_name, block, kind, dynamic, granularity, scaling, scale_rounding, symmetric)
    quantizer = type(name, bases, {"__module__": __name__, "__doc__": f"Built from the {role} spec {spec!r}.", **attrs})
    quantizer.__qualname__ = name
    return _validated(quantizer, spec, path)


# ---- pieces --------------------------------------------------------------------------------------
def _format(spec, kind, path):
    fpath = join(path, "format")
    if "format" not in spec:
        raise ValueError(f"{path} needs a 'format' (e.g. 'int8', 'float8_e4m3fn', 'mxfp4'); allowed formats: {', '.join(format_names())}")
    name = spec["format"]
    if not isinstance(name, str):
        raise bad_type(fpath, name, "a format name (str)")
    key = name.strip().lower()
    if key in BLOCK_FORMATS:
        element, block = BLOCK_FORMATS[key]
        return element, get_format(element), block
    if kind == "bias" and key in ("int32", "int24"):
        return key, IntFormat(bits=int(key[3:]), signed=True), None
    try:
        fmt = get_format(key)
    except (TypeError, ValueError):
        raise bad_value(fpath, name, format_names()) from None
    if not isinstance(fmt, (IntFormat, FloatFormat, HiFloat8)) or fmt.name == "float8_e8m0fnu":
        raise bad_value(fpath, name, format_names(), "float8_e8m0fnu is a scale format, not an element format")
    return fmt.name, fmt, None


def _granularity(spec, kind, block, path):
    gpath = join(path, "granularity")
    default = "group" if block else "tensor"
    granularity = spec.get("granularity", default)
    if granularity not in GRANULARITIES:
        raise bad_value(gpath, granularity, GRANULARITIES)
    granularity = "group" if granularity == "block" else granularity
    if block and granularity != "group":
        raise bad_value(gpath, granularity, ("group", "block"), f"{spec['format']} is a block format: its scales are shared per block")
    if granularity == "token" and kind != "act":
        raise bad_value(gpath, granularity, ("tensor", "channel", "group", "block"), "'token' is for activations (inputs/outputs)")
    group_size = spec.get("group_size")  # checked by the attribute schema (applies to groups only)
    if granularity == "group" and group_size is None:  # the zoo's defaults: NVFP4 16, MX 32, int groups 128
        group_size = 16 if block == "nvfp4" else 32 if block else 128
    return granularity, group_size


def _integer_scheme(spec, kind, fmt, block, path):
    symmetric = _bool(spec, "symmetric", True, path)
    narrow = spec.get("narrow")
    formulation = spec.get("formulation", "zp")
    if formulation not in FORMULATIONS:
        raise bad_value(join(path, "formulation"), formulation, FORMULATIONS)
    is_int = isinstance(fmt, IntFormat)
    if not symmetric and (not is_int or block):
        raise ValueError(f"{join(path, 'symmetric')}=False needs an integer format with its own scale (a zero point); {spec['format']!r} is symmetric only")
    if formulation == "minval" and symmetric:
        raise ValueError(
            f"{join(path, 'formulation')}='minval' is supported with symmetric=False (asymmetric ranges); "
            "symmetric MINVAL (minval = -max_abs) is not available in qzoo's scale rules"
        )
    if narrow is not None:
        if not isinstance(narrow, bool):
            raise bad_type(join(path, "narrow"), narrow, "True, False or None")
        if narrow and not (is_int and fmt.signed and symmetric):
            raise ValueError(f"{join(path, 'narrow')}=True needs a symmetric signed integer format, got {spec['format']!r}")
        if block == "mx" and is_int and not narrow:
            raise ValueError(f"{join(path, 'narrow')}=False is not allowed for mxint8: OCP MXINT8 elements are k/64 with |k| <= 127")
    elif is_int:  # range from the tensor itself (weights, dynamic activations): [-127, 127] as the zoo
        dynamic = kind == "act" and (spec.get("dynamic") or spec.get("granularity") in ("group", "block", "token"))
        narrow = bool(fmt.signed and symmetric and (block == "mx" or kind in ("weight", "bias") or dynamic))
    return symmetric, bool(narrow), formulation


def _scale(spec, kind, fmt, fmt_name, block, granularity, symmetric, path):
    spath = join(path, "scale")
    allowed = tuple(SCALES) + (("accumulator",) if kind == "bias" else ())
    if "scale" in spec:
        name = spec["scale"]
        if name not in allowed:
            raise bad_value(spath, name, allowed)
    elif block:
        name = "nvfp4" if block == "nvfp4" else "e8m0_floor"
    elif kind == "bias" and isinstance(fmt, IntFormat):
        name = "accumulator"
    else:
        name = "po2" if fmt_name == "hifloat8" else "float"
    if name == "accumulator":
        if not isinstance(fmt, IntFormat) or not fmt.signed:
            raise ValueError(f"{spath}='accumulator' needs a signed integer format (e.g. 'int32'), got {spec['format']!r}")
        return "accumulator", None
    scaling, rounding = SCALES[name]
    if block == "mx" and scaling != "e8m0":
        raise bad_value(spath, name, [s for s in SCALES if s.startswith("e8m0")], "OCP MX formats share E8M0 scales")
    if block == "nvfp4" and scaling != "nvfp4":
        raise bad_value(spath, name, ("nvfp4",), "NVFP4 has E4M3 block scales times an fp32 tensor scale")
    if scaling == "e8m0" and isinstance(fmt, IntFormat) and block != "mx":
        raise ValueError(f"{spath}={name!r} needs a float element format or format='mxint8', got {spec['format']!r}")
    if scaling == "nvfp4" and granularity != "group":
        raise ValueError(f"{spath}='nvfp4' needs granularity 'group' (blocks of 16), got {granularity!r}")
    if not symmetric and scaling not in ("float", "po2"):
        raise ValueError(f"{spath}={name!r} cannot carry a zero point; use scale 'float' or 'po2' with symmetric=False")
    return scaling, rounding


def _dynamic(spec, kind, block, granularity, path):
    dpath = join(path, "dynamic")
    if kind != "act":
        if "dynamic" in spec:
            raise ValueError(f"{dpath} applies to activations (inputs, outputs, activations); {kind}s always take their range from the tensor")
        return False
    needs_dynamic = granularity in ("group", "token")
    dynamic = _bool(spec, "dynamic", needs_dynamic, path)
    if needs_dynamic and not dynamic:
        raise ValueError(f"{dpath}=False is not available with granularity {granularity!r}: block and per-token scales are computed from each tensor")
    return dynamic


def _observer(spec, kind, dynamic, fmt_name, path):
    opath = join(path, "observer")
    name = spec.get("observer")
    if kind == "act" and not dynamic:
        if name is None:
            name = "mse" if fmt_name == "hifloat8" else "percentile" if fmt_name.startswith(("int", "uint")) else "mean"
        if name not in STATIC_OBSERVERS:
            raise bad_value(opath, name, STATIC_OBSERVERS)
        return STATIC_OBSERVERS[name]
    if name is None:
        name = "mse" if fmt_name == "hifloat8" and "scale" not in spec else "minmax"
    if name not in RANGE_ONLY_OBSERVERS:
        why = "weights take their range from the tensor itself" if kind != "act" else "dynamic activations take their range from each tensor"
        raise bad_value(opath, name, RANGE_ONLY_OBSERVERS, why)
    return None, RANGE_ONLY_OBSERVERS[name]


def _pass_through(spec, attrs):
    """Keys that are quantizer attributes of the same name; the schema checks their values."""
    for key in PASS_THROUGH_KEYS:
        if spec.get(key) is not None:
            attrs[key] = tuple(spec[key]) if isinstance(spec[key], list) else spec[key]


def _validated(quantizer: Type[Quantizer], spec: Mapping[str, Any], path: str) -> Type[Quantizer]:
    """``quantizer`` once its attributes resolve; a schema error names the spec key at fault."""
    try:
        resolve_attributes(quantizer)
    except QuantizerConfigError as error:
        key = ATTRIBUTE_KEYS.get(error.attribute, error.attribute)
        raise error.located(join(path, key) if key in spec else path) from None
    return quantizer


def _element_mixins(fmt, fmt_name, narrow) -> Tuple[type, ...]:
    if isinstance(fmt, IntFormat):
        return (UintQuant,) if not fmt.signed else (NarrowIntQuant,) if narrow else (IntQuant,)
    if fmt_name in _FLOAT_MIXINS:
        return _FLOAT_MIXINS[fmt_name]
    return (_generic_float(fmt_name),)


def _generic_float(fmt_name: str) -> type:
    """A float element mixin for a named format without its own mixin (``float8_e3m4``, ...)."""
    return type(f"{fmt_name}Elements", (FloatQuant,), {"__module__": __name__, "element_format": fmt_name})


def _class_name(fmt, fmt_name, block, kind, dynamic, granularity, scaling, scale_rounding, symmetric) -> str:
    role = {"weight": "Weight", "bias": "Bias", "act": "Act"}[kind]
    if block == "mx":
        element = "Int8" if isinstance(fmt, IntFormat) else _TYPE_NAMES[fmt_name].replace("OCP", "")
        base = f"MX{element.replace('Fp', 'Float')}{role}"
        return base + ("" if scale_rounding == "floor" else scale_rounding.capitalize())
    if block == "nvfp4":
        return f"NVFloat4e2m1{role}"
    if scaling == "accumulator":
        return f"Int{fmt.bits}Bias"
    if isinstance(fmt, IntFormat):
        element = f"{'Int' if fmt.signed else 'Uint'}{fmt.bits}"
    else:
        element = _TYPE_NAMES.get(fmt_name, "".join(p.capitalize() for p in fmt_name.split("_")))
    per = {"tensor": "PerTensor", "channel": "PerChannel", "group": "PerGroup", "token": "PerToken"}[granularity]
    scale = _SCALE_NAMES[scaling] + ("" if symmetric else "Asym")
    return f"{element}{role}{per}{scale}{'Dynamic' if dynamic and granularity != 'token' else ''}"


def _bool(spec, key, default, path):
    value = spec.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise bad_type(join(path, key), value, "True or False")
    return value
