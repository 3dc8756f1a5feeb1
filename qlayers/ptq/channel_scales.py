"""The procedure SmoothQuant and AWQ share: per-input-channel scales for groups of layers.

1. Targets: the quantized Linear layers and groups=1 Conv layers (:func:`~qlayers.ptq.targets.select_layers`).
2. Plan, before any weight changes: layers that share one input form a group
   (:mod:`qlayers.ptq.graph`), and each group's ``1 / s`` goes into the preceding op where folding
   leaves the model's function unchanged, else into an input multiplier; with
   ``input_multiplier=False`` a group with no foldable producer raises ``ValueError`` naming the
   layer and why.
3. Statistics of the float network's inputs (:func:`~qlayers.ptq.layer_inputs.collect_inputs`).
4. Per group: the algorithm's ``choose`` gives ``s``; it is committed (:func:`qlayers.ptq.fold.fold_scale`);
   an optional ``finish`` step runs per layer (AWQ's clip search). The report's errors are the
   layers' relative output errors on the sample rows, before and after.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..model.calibrate import _progress
from ..model.qat import quantization_disabled
from . import fold
from .capture import as_batches, check_data, first_batch
from .graph import Forward, InputGroup, fold_preserves, input_groups
from .layer_inputs import LayerInputs, collect_inputs, float_output, relative_error
from .report import LayerReport, PTQReport
from .runner import eval_mode
from .targets import select_layers

logger = logging.getLogger("qlayers.ptq")

#: ``choose(layers, rows, references, stats) -> (s, note)`` for one group.
Choose = Callable[[List[nn.Module], torch.Tensor, List[torch.Tensor], LayerInputs], Tuple[torch.Tensor, str]]
#: ``finish(layer, rows_it_now_receives) -> note`` after the scale is committed.
Finish = Callable[[nn.Module, torch.Tensor], str]


def applies(layer: nn.Module) -> Optional[str]:
    """Why a per-input-channel scale cannot apply to ``layer``, or None."""
    if fold.is_consumer(layer):
        return None
    return f"a per-input-channel scale needs a Linear or a Conv with groups=1, not {type(layer).__name__}" + (
        f"(groups={layer.groups})" if hasattr(layer, "groups") else "")


def check(model: nn.Module, algorithm: str, layers: Optional[Sequence[str]]) -> dict:
    """The layers ``algorithm`` will scale (raises, naming a named layer it cannot apply to)."""
    return select_layers(model, algorithm, applies, layers)[0]


def preflight(
    model: nn.Module, batch: Any, forward: Forward, *, algorithm: str, layers: Optional[Sequence[str]],
    fold: bool, input_multiplier: bool,
) -> None:
    """Raise, changing nothing, when a layer can take ``1 / s`` nowhere (``input_multiplier=False``
    and no foldable producer): what :func:`qlayers.ptq.apply` checks before running any algorithm."""
    if input_multiplier:
        return
    targets, _ = select_layers(model, algorithm, applies, layers)
    plan(model, list(targets), batch, fold_into_producer=fold, input_multiplier=False, algorithm=algorithm, forward=forward)


def scale_groups(
    model: nn.Module, data: Any, *, algorithm: str, choose: Choose, finish: Optional[Finish] = None,
    layers: Optional[Sequence[str]] = None, fold_into_producer: bool = True, input_multiplier: bool = True,
    max_rows: int = 512, forward: Forward = None, progress: bool = True,
) -> PTQReport:
    """Run the procedure of the module docstring; returns the per-layer report."""
    batches = as_batches(data)
    targets, skipped = select_layers(model, algorithm, applies, layers)
    if not targets:
        raise ValueError(f"{algorithm}: the model has no quantized Linear/Conv layer to scale; quantize it first (qlayers.quantize_model)")
    names = list(targets)
    rows: List[LayerReport] = []
    with eval_mode(model):
        with quantization_disabled(model):  # no calibration yet: check the data on the float network
            check_data(model, batches, targets, forward)
        groups = plan(model, names, first_batch(batches),
                      fold_into_producer=fold_into_producer, input_multiplier=input_multiplier, algorithm=algorithm, forward=forward)
        inputs = collect_inputs(model, names, batches, max_rows=max_rows, forward=forward)
        modules = dict(model.named_modules())
        for group in _progress(groups, len(groups), progress, desc=algorithm):
            start = time.perf_counter()
            members = [modules[n] for n in group.consumers]
            x = inputs[group.consumers[0]].rows
            references = [float_output(layer, x) for layer in members]
            before = [relative_error(layer, x, ref) for layer, ref in zip(members, references)]
            s, note = choose(members, x, references, inputs[group.consumers[0]])
            commit(model, group, s)
            for name, layer, ref, error in zip(group.consumers, members, references, before):
                x_after = inputs_after(group, layer, x, s)
                detail = f"{note}, {group.describe()}" + (f", {finish(layer, x_after)}" if finish else "")
                after = relative_error(layer, x_after, ref)
                rows.append(LayerReport(name, algorithm, error, after, (time.perf_counter() - start) / len(members), detail))
    return PTQReport(tuple(rows), tuple(skipped))


def plan(
    model: nn.Module, names: Sequence[str], batch: Any, *, fold_into_producer: bool, input_multiplier: bool,
    algorithm: str, forward: Forward = None,
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
            logger.warning("the calibrated input range of %s was reset (its input changed); calibrate again", name)
