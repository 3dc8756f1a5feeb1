"""What a packed checkpoint records about a model's quantized layers, and rebuilding them from it.

:func:`layer_records` describes every :class:`~qlayers.QuantLayer` of a model: its class and, per
quantizer role, the validated attributes its runtime quantizer was built from (``None`` where the
role is not quantized). It refuses, naming the layer, what a checkpoint cannot rebuild: a quantizer
not built by qzoo's builder, a static quantizer never calibrated, a layer ``quantize_model`` does not
create (``QuantIdentity``, hand-built merges) or traced residual adds, unless the ``quantize_model``
config is saved with the model.

:func:`rebuild` turns the float architecture back into the quantized model: it replays the config
when there is one, else swaps each recorded layer for its quantized twin with quantizers built from
the recorded attributes, and then checks that the layers and their quantizers are the recorded ones.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from torch import nn

from quantizers.zoo.build import build_quantizer

from ..model.convert import _TWINS, quantize_model
from ..model.functional import traced_adds
from ..quant_layer import QuantLayer
from .manifest import CheckpointError, attributes_from_json, attributes_to_json

_BY_NAME = {cls.__name__: cls for cls in _TWINS}


def layer_records(model: nn.Module, has_config: bool) -> Dict[str, Dict[str, Any]]:
    """``{layer name: {"class": ..., "quantizers": {role: attributes JSON or None}}}`` (see the
    module docstring for what raises ``ValueError``)."""
    records = {}
    for name, module in model.named_modules():
        label = name or "(root)"
        if traced_adds(module) and not has_config:
            raise CheckpointError(
                f"layer {label!r} has residual adds quantized by quantize_model (torch.fx); pass the same config "
                "to save_packed(..., config=...) so loading can replay it"
            )
        if not isinstance(module, QuantLayer):
            continue
        if type(module) not in _TWINS and not has_config:
            raise CheckpointError(
                f"layer {label!r} is a {type(module).__name__}, which a packed checkpoint can rebuild only by "
                f"replaying quantize_model (supported without a config: {', '.join(sorted(_BY_NAME))}); pass config=..."
            )
        quantizers = {}
        for role in module.quant_roles:
            quantizer = getattr(module, f"{role}_quant", None)
            quantizers[role] = None if quantizer is None else _quantizer_record(quantizer, f"layer {label!r}: {role}_quant")
        records[name] = {"class": type(module).__name__, "quantizers": quantizers}
    return records


def _quantizer_record(quantizer: nn.Module, where: str) -> Dict[str, Any]:
    attributes = getattr(quantizer, "quant_attributes", None)
    if attributes is None:
        raise CheckpointError(f"{where} is a {type(quantizer).__name__} not built by qzoo's quantizer builder; it cannot be recorded")
    observer = getattr(quantizer, "observer", None)
    learned = getattr(quantizer, "learned_range", None)
    if observer is not None and not observer.is_initialized and (learned is None or learned.numel() == 0):
        raise CheckpointError(
            f"{where} is a static quantizer that was never calibrated (its observer saw no batch); run "
            "qlayers.calibrate(model, data) before saving"
        )
    return attributes_to_json(attributes, where)


def rebuild(model: nn.Module, config: Optional[Mapping[str, Any]], records: Mapping[str, Any]) -> nn.Module:
    """The quantized model of the float ``model`` (changed in place where possible; use the result)."""
    if config is not None:
        bare = type(model) in _TWINS.values()  # a bare nn.Linear cannot change class in place
        model = quantize_model(model, config, inplace=not bare)
    else:
        for name, record in records.items():
            model = _swap(model, name, record)
    _check_layers(model, records)
    return model


def _swap(model: nn.Module, name: str, record: Mapping[str, Any]) -> nn.Module:
    label = name or "(root)"
    cls = _BY_NAME.get(record.get("class")) if isinstance(record, Mapping) else None
    if cls is None:
        raise CheckpointError(f"layer {label!r}: class {record.get('class')!r} cannot be rebuilt; allowed: {', '.join(sorted(_BY_NAME))}")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"layer {label!r} of the checkpoint is not in the given architecture ({type(model).__name__})") from None
    if type(module) is not _TWINS[cls]:
        raise CheckpointError(
            f"layer {label!r}: the checkpoint has a {cls.__name__}, the architecture a {type(module).__name__} "
            f"(expected nn.{_TWINS[cls].__name__})"
        )
    quantizers = {
        f"{role}_quant": None if attrs is None else build_quantizer(attributes_from_json(attrs, f"{label}.{role}_quant"))
        for role, attrs in record["quantizers"].items()
    }
    twin = cls.from_float(module, **quantizers)
    if not name:
        return twin
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, twin)
    return model


def _check_layers(model: nn.Module, records: Mapping[str, Any]) -> None:
    """The rebuilt model has exactly the recorded quantized layers, with the recorded quantizers."""
    found = {name: module for name, module in model.named_modules() if isinstance(module, QuantLayer)}
    missing = sorted(set(records) - set(found))
    extra = sorted(set(found) - set(records))
    if missing or extra:
        raise CheckpointError(
            "the rebuilt model's quantized layers differ from the checkpoint's: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for name, module in found.items():
        label = name or "(root)"
        if type(module).__name__ != records[name]["class"]:
            raise CheckpointError(f"layer {label!r}: rebuilt as {type(module).__name__}, saved as {records[name]['class']}")
        for role, attrs in records[name]["quantizers"].items():
            quantizer = getattr(module, f"{role}_quant", None)
            got = None if quantizer is None else attributes_to_json(quantizer.quant_attributes, f"{label}.{role}_quant")
            if got != attrs:
                raise CheckpointError(f"{label}.{role}_quant: rebuilt with {got}, saved with {attrs}")
