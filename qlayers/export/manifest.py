"""The JSON manifest of a packed checkpoint: versions, quantizer attributes and packed-tensor metadata.

Everything a checkpoint needs besides its tensors is plain JSON:

- ``format_version`` (:data:`FORMAT_VERSION`) and the ``qzoo_version`` that wrote it; a manifest
  from a newer format version is refused on load (:func:`check_version`);
- each quantizer's validated :class:`~quantizers.zoo.attributes.QuantizerAttributes`
  (:func:`attributes_to_json`; enums by value, formats by name or by their declared fields,
  quantizer classes from ``quantizers``/``qlayers`` by import path), which rebuild the same runtime
  quantizer (:func:`attributes_from_json`);
- each packed weight's :class:`~quantizers.tensor.packed.PackedQuantTensor` fields other than its
  tensors (:func:`packed_to_json` / :func:`packed_from_json`).
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
from typing import Any, Dict, Optional

import torch

from quantizers.formats import E8M0, FloatFormat, HiFloat8, IntFormat, NumberFormat, get_format
from quantizers.tensor.packed import PackedQuantTensor
from quantizers.zoo.attributes import QuantizerAttributes

FORMAT_VERSION = 1
"""Version of the manifest layout this qzoo writes and the newest it reads."""
MANIFEST_NAME = "qzoo_manifest.json"
WEIGHTS_NAME = "model.safetensors"
TENSOR_FIELDS = ("codes", "scale", "zero_point", "outer_scale")
"""The tensors of a PackedQuantTensor, stored as ``<layer>.weight.<field>``."""

_FORMAT_CLASSES = {cls.__name__: cls for cls in (FloatFormat, IntFormat, HiFloat8, E8M0)}
_TRUSTED_MODULES = ("quantizers.", "qlayers.")


class CheckpointError(ValueError):
    """A packed checkpoint that cannot be written or read as it is (the message says why and where)."""


def qzoo_version() -> str:
    """The installed qzoo distribution's version (``"unknown"`` when run from a source tree)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "unknown"
    try:
        return version("qzoo")
    except PackageNotFoundError:
        return "unknown"


def check_version(manifest: Dict[str, Any], where: str) -> None:
    """Raise :class:`CheckpointError` unless ``manifest`` is a qzoo manifest this version reads."""
    if not isinstance(manifest, dict) or manifest.get("format") != "qzoo-packed":
        raise CheckpointError(f"{where} is not a qzoo packed-checkpoint manifest (no \"format\": \"qzoo-packed\")")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{where}: format_version={version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} was written by qzoo {manifest.get('qzoo_version', '?')} with manifest format_version="
            f"{version}; this qzoo ({qzoo_version()}) reads format_version <= {FORMAT_VERSION}: upgrade qzoo to load it"
        )


# ---- formats and dtypes ---------------------------------------------------------------------------
def format_to_json(fmt: NumberFormat) -> Any:
    """A format's canonical name when :func:`get_format` gives it back, else its class and fields."""
    try:
        if get_format(fmt.name) == fmt:
            return fmt.name
    except ValueError:
        pass
    if type(fmt).__name__ not in _FORMAT_CLASSES:
        raise CheckpointError(f"format {fmt!r} ({type(fmt).__name__}) has no JSON form; allowed: {', '.join(_FORMAT_CLASSES)}")
    return {"class": type(fmt).__name__, "fields": _plain(fmt.__getstate__())}


def format_from_json(data: Any) -> NumberFormat:
    if isinstance(data, str):
        return get_format(data)
    if not isinstance(data, dict) or data.get("class") not in _FORMAT_CLASSES or not isinstance(data.get("fields"), dict):
        raise CheckpointError(f"format {data!r} is neither a format name nor {{'class', 'fields'}} of {', '.join(_FORMAT_CLASSES)}")
    cls = _FORMAT_CLASSES[data["class"]]
    fmt = cls.__new__(cls)
    fmt.__setstate__({k: tuple(v) if isinstance(v, list) else v for k, v in data["fields"].items()})  # validated
    return fmt


def dtype_from_json(name: Any) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"dtype {name!r} is not a torch dtype")
    return dtype


# ---- quantizer attributes -------------------------------------------------------------------------
def attributes_to_json(attributes: QuantizerAttributes, where: str) -> Dict[str, Any]:
    """The attributes that differ from the schema's defaults, as JSON values."""
    out = {}
    for f in dataclasses.fields(attributes):
        value = getattr(attributes, f.name)
        if value != f.default:
            out[f.name] = _attribute_value(value, f"{where}.{f.name}")
    return out


def attributes_from_json(data: Dict[str, Any], where: str) -> QuantizerAttributes:
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: quantizer attributes must be a JSON object, got {data!r}")
    try:
        return QuantizerAttributes(**{name: _attribute_from_json(value, where) for name, value in data.items()})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: the recorded quantizer attributes are invalid: {error}") from None


def _attribute_value(value: Any, where: str) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, NumberFormat):
        return {"format": format_to_json(value)}
    if isinstance(value, type):
        path = f"{value.__module__}:{value.__qualname__}"
        if not value.__module__.startswith(_TRUSTED_MODULES) or _import(path) is not value:
            raise CheckpointError(
                f"{where}={value.__name__} is a class outside qzoo; a packed checkpoint records only qzoo's "
                "scalers and observers (pass the quantize_model config to save_packed(config=...) instead)"
            )
        return {"class": path}
    if isinstance(value, tuple):
        return [_attribute_value(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"{where}={value!r} ({type(value).__name__}) cannot be recorded in a packed checkpoint")


def _attribute_from_json(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return tuple(_attribute_from_json(v, where) for v in value)
    if isinstance(value, dict) and set(value) == {"format"}:
        return format_from_json(value["format"])
    if isinstance(value, dict) and set(value) == {"class"}:
        path = value["class"]
        if not isinstance(path, str) or not path.startswith(_TRUSTED_MODULES):
            raise CheckpointError(f"{where}: class {path!r} is outside qzoo's packages; refusing to import it")
        return _import(path)
    return value


def _import(path: str) -> Any:
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


# ---- packed tensors -------------------------------------------------------------------------------
def packed_to_json(packed: PackedQuantTensor) -> Dict[str, Any]:
    """``packed``'s fields other than its tensors (which are stored in the safetensors file)."""
    def dtype(d: Optional[torch.dtype]) -> Optional[str]:
        return None if d is None else str(d).removeprefix("torch.")

    return {
        "kind": packed.kind, "fmt": format_to_json(packed.fmt), "layout": packed.layout,
        "value_shape": list(packed.value_shape), "value_dtype": dtype(packed.value_dtype),
        "scale_codes_format": None if packed.scale_codes_format is None else format_to_json(packed.scale_codes_format),
        "scale_dtype": dtype(packed.scale_dtype), "zero_point_shape": list(packed.zero_point_shape),
        "zero_point_dtype": dtype(packed.zero_point_dtype),
        "scale_format": None if packed.scale_format is None else format_to_json(packed.scale_format),
        "group_size": packed.group_size, "group_dim": packed.group_dim,
        "original_shape": None if packed.original_shape is None else list(packed.original_shape),
        "rounded_dtype": dtype(packed.rounded_dtype),
    }


def packed_from_json(data: Dict[str, Any], tensors: Dict[str, Optional[torch.Tensor]], where: str) -> PackedQuantTensor:
    """The PackedQuantTensor of ``data`` (from :func:`packed_to_json`) and its ``tensors``."""
    try:
        def optional(key, convert):
            return None if data[key] is None else convert(data[key])

        return PackedQuantTensor(
            kind=data["kind"], fmt=format_from_json(data["fmt"]), codes=tensors["codes"], layout=data["layout"],
            value_shape=torch.Size(data["value_shape"]), value_dtype=dtype_from_json(data["value_dtype"]),
            scale=tensors["scale"], scale_codes_format=optional("scale_codes_format", format_from_json),
            scale_dtype=dtype_from_json(data["scale_dtype"]), zero_point=tensors.get("zero_point"),
            zero_point_shape=torch.Size(data["zero_point_shape"]), zero_point_dtype=dtype_from_json(data["zero_point_dtype"]),
            outer_scale=tensors.get("outer_scale"), scale_format=optional("scale_format", format_from_json),
            group_size=data["group_size"], group_dim=data["group_dim"],
            original_shape=optional("original_shape", torch.Size), rounded_dtype=optional("rounded_dtype", dtype_from_json),
        )
    except KeyError as error:
        raise CheckpointError(f"{where}: the manifest entry lacks {error}") from None
    except TypeError as error:
        raise CheckpointError(f"{where}: the manifest entry is malformed: {error}") from None
