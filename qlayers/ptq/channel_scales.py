"""The plan SmoothQuant and AWQ share: which layers get a per-input-channel scale, grouped by the
input they share, and where each group's ``1 / s`` goes (folded into the producer, or kept as an
input multiplier). The plan is made, and every impossibility raised, before any weight changes."""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from ..model.qat import quant_layers
from ..weight_layer import QuantWeightLayer
from . import fold
from .graph import Forward, InputGroup, fold_preserves, input_groups

logger = logging.getLogger("qlayers.ptq")


def target_layers(model: nn.Module, layers: Optional[Sequence[str]], algorithm: str) -> List[str]:
    """Names of the quantized Linear/Conv layers to transform: all of them, or those matching the
    patterns ``layers`` (globs or regexes, as config overrides). A matched layer that cannot take
    a per-input-channel scale raises, naming it."""
    if layers is not None and (isinstance(layers, str) or not all(isinstance(p, str) for p in layers)):
        raise TypeError(f"{algorithm}: layers must be a list of layer-name patterns, got {layers!r}")
    names = []
    for name, layer in quant_layers(model, layers):
        if not isinstance(layer, QuantWeightLayer) or layer.weight_quant is None and layer.input_quant is None:
            continue
        if layers is None and not fold.is_consumer(layer):
            continue  # embeddings, grouped or transposed convolutions: left alone
        fold.check_consumer(layer, name)
        names.append(name)
    if not names:
        raise ValueError(
            f"{algorithm}: no quantized Linear/Conv layer {'matches layers=' + repr(list(layers)) if layers else 'in the model'}; "
            "quantize the model first (qlayers.quantize_model)"
        )
    return names


def plan(
    model: nn.Module, names: Sequence[str], batch: Any, *, fold_into_producer: bool, input_multiplier: bool,
    algorithm: str, forward: Optional[Forward] = None,
) -> List[InputGroup]:
    """Group ``names`` by shared input and choose where each group's ``1 / s`` goes; raises
    ``ValueError`` naming the first layer that can take it nowhere."""
    groups = input_groups(model, names, batch, forward)
    if fold_into_producer:
        fold_preserves(model, groups, batch, forward)
    else:
        for group in groups:
            if group.producer is not None:
                group.reason, group.producer = f"fold=False (producer {group.producer} not used)", None
    if not input_multiplier:
        for group in groups:
            if group.producer is None:
                raise ValueError(
                    f"{algorithm} cannot apply to layer {group.consumers[0]!r}: it has no foldable preceding op "
                    f"({group.reason}) and input_multiplier=False; allow input_multiplier=True or leave it out of `layers`"
                )
    return groups


def inputs_after(group: InputGroup, layer: nn.Module, rows: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives for the input ``rows`` once ``s`` is committed: ``rows / s`` when
    the producer absorbed ``1 / s``, ``rows`` itself when the layer multiplies them."""
    if group.producer is None:
        return rows
    shape = [1] * rows.dim()
    shape[fold.input_channel_axis(layer)] = -1
    return rows / s.to(rows).reshape(shape)


def commit(model: nn.Module, group: InputGroup, s: torch.Tensor) -> None:
    """Apply the scale ``s`` to ``group`` (see :func:`qlayers.ptq.fold.fold_scale`); calibrated
    activation ranges of the layers whose input changed are reset (calibrate again)."""
    modules = dict(model.named_modules())
    consumers = [modules[n] for n in group.consumers]
    fold.fold_scale(modules[group.producer] if group.producer else None, consumers, s)
    for name, layer in zip(group.consumers, consumers):
        quantizer = getattr(layer, "input_quant", None)
        observer = getattr(quantizer, "observer", None)
        if observer is not None and observer.is_initialized:
            observer.reset()
            quantizer.range_source = quantizer.default_range_source
            logger.warning("%s: the calibrated input range of %s was reset (its input changed); calibrate again", type(model).__name__, name)
