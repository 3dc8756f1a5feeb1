"""Apple coreai_opt ``QuantizationSpec`` dicts as qzoo quantizers.

``spec_to_quantizer(spec, role)`` translates a ``QuantizationSpec`` (a dict, or the pydantic object
itself) into a declarative qzoo spec (:mod:`qlayers.model.spec`) and resolves that to a quantizer
class, so there is one path from any dialect to the mixins. A config section holding such a dict
(recognised by its ``dtype`` key) goes the same way::

    qlayers.quantize_model(model, {"weights": {"dtype": "int4", "qscheme": "symmetric",
                                               "granularity": {"type": "per_block", "axis": 1, "block_size": 32}}})

Mapping (exact unless noted):

- ``dtype``: int8/int4/int2, uint8/uint4/uint2, float8_e4m3fn, float8_e5m2, float4_e2m1fn_x2 (and
  the aliases float4_e2m1fn, float8_e4m3), as strings or ``torch.dtype``.
- ``qscheme``: ``symmetric`` -> full range ``[-2^(b-1), 2^(b-1)-1]`` with ``scale = max_abs /
  (2^(b-1) - 0.5)``; ``symmetric_with_clipping`` -> narrow ``[-(2^(b-1)-1), 2^(b-1)-1]``, ``max_abs /
  (2^(b-1)-1)``; ``asymmetric`` -> ``range / (2^b - 1)`` with an integer zero point. Unsigned
  symmetric dtypes (zero point 2^(b-1)) dequantize to exactly the signed full-range grid, which is
  what qzoo uses for them.
- ``qformulation``: ``zp``; ``minval`` with ``asymmetric`` (symmetric MINVAL, minval = -max_abs, is
  not available in qzoo's scale rules: ``NotImplementedError``).
- ``granularity``: ``per_tensor``; ``per_channel`` (``axis`` -> ``channel_axis``); ``per_block``
  with an int ``block_size`` along ``axis`` (``None``: the layer's reduction axis), or a tuple whose
  only entry other than 1 gives the axis and size. qzoo blocks of a conv weight are taken at each
  kernel position, coreai's span the kernel.
- ``qparam_calculator_cls``: weights take their range from the tensor (``default``/``static``);
  activations: ``default``/``moving_average`` -> EMA (momentum 0.01, coreai's averaging constant;
  qzoo averages ``max_abs`` where coreai averages min and max separately), ``static`` -> the last
  batch, ``global_minmax`` -> running min/max.
- ``scale_dtype``: ``None`` (``max_abs / fp_max``; FP4 defaults to E8M0) or ``float8_e8m0fnu``
  (``2^(floor(log2 max_abs) - emax)``, the OCP MX floor rule, in the spec's granularity).
- ``float_range``: fixed ends of the range, as coreai.
- ``fake_quantize_cls`` ``default`` and ``range_calculator_cls`` ``minmax`` only.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

import torch

from quantizers import Quantizer

from ..model.errors import bad_type, bad_value, join, unknown_key
from ..model.spec import ROLES
from ..model.spec import spec_to_quantizer as _declarative

SPEC_KEYS = (
    "dtype", "qscheme", "qformulation", "granularity", "fake_quantize_cls", "qparam_calculator_cls",
    "range_calculator_cls", "float_range", "scale_dtype",
)
COMPUTED_KEYS = ("n_bits", "target_dtype", "_quant_range", "quant_min", "quant_max")
"""Fields ``QuantizationSpec.model_dump()`` adds; dropped on input, as coreai_opt does."""
SUPPORTED_DTYPES = ("int8", "int4", "int2", "uint8", "uint4", "uint2", "float8_e4m3fn", "float8_e5m2", "float4_e2m1fn_x2")
DTYPE_ALIASES = {"float4_e2m1fn": "float4_e2m1fn_x2", "float8_e4m3": "float8_e4m3fn", "float8_e8m0": "float8_e8m0fnu"}
QSCHEMES = ("symmetric", "symmetric_with_clipping", "asymmetric")
QFORMULATIONS = ("zp", "minval")
GRANULARITIES = ("per_tensor", "per_channel", "per_block")
ACT_CALCULATORS = {"default": "ema_minmax", "moving_average": "ema_minmax", "static": "minmax", "global_minmax": "global_minmax"}
AVERAGING_CONSTANT = 0.01


def spec_to_quantizer(spec: Any, role: str = "weight", path: str = "spec") -> Type[Quantizer]:
    """The quantizer class for a coreai_opt ``QuantizationSpec`` (dict or object) used as ``role``
    (``"weight"``, ``"input"``, ``"output"``, ``"act"``, ``"bias"``)."""
    return _declarative(translate(spec, role, path), role, path)


def translate(spec: Any, role: str = "weight", path: str = "spec") -> Dict[str, Any]:
    """The qzoo declarative spec equivalent to ``spec`` (see the module docstring)."""
    if role not in ROLES:
        raise bad_value("role", role, ROLES)
    spec = _as_dict(spec, path)
    for key in spec:
        if key not in SPEC_KEYS and key not in COMPUTED_KEYS:
            raise unknown_key(path, key, SPEC_KEYS)
    act = ROLES[role] == "act"
    dtype = _dtype(spec.get("dtype", "int8"), join(path, "dtype"))
    qscheme = _enum(spec.get("qscheme", "symmetric"), QSCHEMES, join(path, "qscheme"))
    formulation = _enum(spec.get("qformulation", "zp"), QFORMULATIONS, join(path, "qformulation"))
    is_float = dtype.startswith("float")
    if is_float and qscheme != "symmetric":
        raise bad_value(join(path, "qscheme"), qscheme, ("symmetric",), f"FP quantization (dtype={dtype}) requires the symmetric scheme")
    if is_float and formulation != "zp":
        raise bad_value(join(path, "qformulation"), formulation, ("zp",), f"FP quantization (dtype={dtype}) requires the zero-point formulation")
    if formulation == "minval" and qscheme != "asymmetric":
        raise NotImplementedError(
            f"{path}: qformulation='minval' with qscheme={qscheme!r} (minval = -max_abs) is not yet "
            "supported by qzoo; use qscheme='asymmetric' or qformulation='zp'"
        )
    for key, allowed in (("fake_quantize_cls", ("default",)), ("range_calculator_cls", ("minmax",))):
        if key in spec and _name(spec[key]) not in allowed:
            raise NotImplementedError(f"{join(path, key)}={spec[key]!r} is not yet supported by qzoo; supported: {', '.join(allowed)}")

    out: Dict[str, Any] = _element(dtype, qscheme)
    if formulation == "minval":
        out["formulation"] = "minval"
    out.update(_granularity(spec.get("granularity"), act, join(path, "granularity")))
    scale = _scale_dtype(spec.get("scale_dtype"), dtype, join(path, "scale_dtype"))
    if scale is not None:
        out["scale"] = scale
    calculator = _name(spec.get("qparam_calculator_cls", "default"))
    cpath = join(path, "qparam_calculator_cls")
    if act:
        if out.get("granularity") == "group":
            raise NotImplementedError(f"{path}: per_block activation quantization with a static calculator is not yet supported by qzoo")
        if calculator not in ACT_CALCULATORS:
            raise bad_value(cpath, calculator, ACT_CALCULATORS)
        out["observer"] = ACT_CALCULATORS[calculator]
        if out["observer"] == "ema_minmax":
            out["momentum"] = AVERAGING_CONSTANT
    elif calculator not in ("default", "static"):
        raise NotImplementedError(f"{cpath}={calculator!r} for weights is not yet supported by qzoo: weights take their range from the tensor ('default' or 'static')")
    float_range = spec.get("float_range")
    if float_range is not None and (not isinstance(float_range, (list, tuple)) or list(float_range) != [None, None]):
        out["float_range"] = float_range  # checked by the quantizer attribute schema
    return out


def _as_dict(spec: Any, path: str) -> Dict[str, Any]:
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    if not isinstance(spec, Mapping):
        raise bad_type(path, spec, "a coreai_opt QuantizationSpec or its dict")
    return dict(spec)


def _name(value: Any) -> str:
    """The string of an enum member, a registered class, a torch dtype or a plain string."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, type):
        return value.__name__
    return str(getattr(value, "value", value)).lower()


def _enum(value: Any, allowed, path: str) -> str:
    name = _name(value)
    if name not in allowed:
        raise bad_value(path, value, allowed)
    return name


def _dtype(value: Any, path: str) -> str:
    name = _name(value) if isinstance(value, torch.dtype) else str(value).removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in SUPPORTED_DTYPES:
        raise bad_value(path, value, SUPPORTED_DTYPES, "Unsupported dtype")
    return name


def _element(dtype: str, qscheme: str) -> Dict[str, Any]:
    if dtype.startswith("float"):
        return {"format": "float4_e2m1fn" if dtype == "float4_e2m1fn_x2" else dtype}
    bits = int(dtype.removeprefix("u").removeprefix("int"))
    if qscheme == "asymmetric":
        return {"format": dtype, "symmetric": False}
    # signed: symmetric = full range, with clipping = narrow; unsigned symmetric = the signed full-range grid
    narrow = qscheme == "symmetric_with_clipping" and not dtype.startswith("u")
    return {"format": f"int{bits}", "narrow": narrow, "full_range_divisor": "half_range"}


def _granularity(value: Any, act: bool, path: str) -> Dict[str, Any]:
    if value is None:
        return {"granularity": "tensor"}
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise bad_type(path, value, "a dict such as {'type': 'per_channel', 'axis': 0}")
    kind = _enum(value.get("type"), GRANULARITIES, join(path, "type"))
    axis = value.get("axis")
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise bad_type(join(path, "axis"), axis, "an int or None")
    if kind == "per_tensor":
        return {"granularity": "tensor"}
    if kind == "per_channel":
        return {"granularity": "channel", **({"channel_axis": axis} if axis is not None else {})}
    size, axis = _block(value.get("block_size"), axis, join(path, "block_size"))
    return {"granularity": "group", "group_size": size, **({"group_dim": axis} if axis is not None else {})}


def _block(block_size: Any, axis: Optional[int], path: str):
    if isinstance(block_size, int) and not isinstance(block_size, bool) and block_size > 0:
        return block_size, axis
    if isinstance(block_size, (list, tuple)) and all(isinstance(b, int) and not isinstance(b, bool) for b in block_size):
        blocked = [(i, b) for i, b in enumerate(block_size) if b != 1]
        if len(blocked) == 1 and blocked[0][1] > 1:
            return blocked[0][1], blocked[0][0]
        raise NotImplementedError(
            f"{path}={tuple(block_size)!r}: blocks over several axes are not yet supported by qzoo; "
            "give one axis a size > 1 and the others 1 (e.g. (1, 32))"
        )
    raise bad_type(path, block_size, "a positive int or a tuple of ints")


def _scale_dtype(value: Any, dtype: str, path: str) -> Optional[str]:
    if value is None:
        return "e8m0_floor" if dtype == "float4_e2m1fn_x2" else None
    name = DTYPE_ALIASES.get(_name(value), _name(value))
    if name != "float8_e8m0fnu":
        raise bad_value(path, value, (None, "float8_e8m0fnu"), "only None or float8_e8m0fnu scales are supported")
    if not dtype.startswith("float"):
        raise ValueError(f"{path}={value!r} must be None for integer dtypes, got dtype={dtype}")
    return "e8m0_floor"
