"""What the scale searches need from the calibration data: each layer's input statistics per
channel and a bounded sample of its inputs, and the layer's quantized and float outputs on them.

:func:`collect_inputs` runs the data once with forward pre-hooks on the chosen layers. Per input
channel ``j`` it accumulates ``max|x_j|`` and ``mean|x_j|`` over every position of every batch; it
keeps at most ``max_rows`` rows (tokens for a Linear, ``(C, H, W)`` samples for a Conv), taken
evenly from every batch, for the searches to score candidates on.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from quantizers import RangeSource, TensorQuantizer

from ..model.qat import quantization_disabled
from ..quant_layer import QuantLayer, dequantize
from .capture import Forward, run_batch
from .distributed import all_reduce_count, all_reduce_sum, is_distributed


@dataclass
class LayerInputs:
    """Per-channel ``absmax`` and ``absmean`` of a layer's input over all the data, and ``rows``:
    a sample of the inputs (``(N, C)`` for a Linear, ``(N, C, ...)`` for a Conv)."""

    absmax: torch.Tensor
    absmean: torch.Tensor
    rows: torch.Tensor
    count: int = 0
    parts: List[torch.Tensor] = field(default_factory=list, repr=False)


def collect_inputs(
    model: nn.Module, names: Sequence[str], batches: Sequence[Any], *, max_rows: int = 512,
    float_model: bool = True, forward: Optional[Forward] = None,
) -> Dict[str, LayerInputs]:
    """:class:`LayerInputs` of each layer in ``names`` (see the module docstring); with
    ``float_model`` the data runs with quantization disabled (the float network's activations)."""
    modules = dict(model.named_modules())
    per_batch = max(1, -(-max_rows // len(batches)))
    found: Dict[str, LayerInputs] = {}

    def hook(name):
        def record(module, args):
            x = dequantize(args[0]).detach()
            axis = 1 if x.dim() > 1 and not isinstance(module, nn.Linear) else x.dim() - 1
            flat = x.movedim(axis, -1).reshape(-1, x.shape[axis]).float().abs()
            stats = found.get(name)
            if stats is None:
                stats = found[name] = LayerInputs(flat.amax(0), torch.zeros_like(flat[0]), torch.empty(0))
            stats.absmax = torch.maximum(stats.absmax, flat.amax(0))
            stats.absmean = stats.absmean + (flat.sum(0) - flat.shape[0] * stats.absmean) / (stats.count + flat.shape[0])
            stats.count += flat.shape[0]
            sample = x.reshape(-1, x.shape[-1]) if isinstance(module, nn.Linear) else x
            step = max(1, sample.shape[0] // per_batch)
            stats.parts.append(sample[::step][:per_batch].clone())
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with quantization_disabled(model) if float_model else contextlib.nullcontext(), torch.no_grad():
            for batch in batches:
                run_batch(model, batch, forward)
    finally:
        for handle in handles:
            handle.remove()
    for name in names:
        if name not in found:
            raise ValueError(f"layer {name!r} received no input from the calibration data; leave it out of `layers`")
        stats = found[name]
        stats.rows, stats.parts = torch.cat(stats.parts)[:max_rows], []
        _combine_ranks(stats)
    return found


def _combine_ranks(stats: LayerInputs) -> None:
    """Under ``torch.distributed``: the maximum and the mean over every rank's data (each rank
    keeps its own sample rows)."""
    if not is_distributed():
        return
    torch.distributed.all_reduce(stats.absmax, op=torch.distributed.ReduceOp.MAX)
    total = all_reduce_count(stats.count, stats.absmean.device)
    stats.absmean = all_reduce_sum(stats.absmean * stats.count) / total
    stats.count = int(total)


@contextlib.contextmanager
def own_ranges(layer: nn.Module) -> Iterator[None]:
    """Static activation quantizers of ``layer`` take their range from each tensor (as if
    calibrated on it) while searches score candidates; restored afterwards."""
    changed = []
    for module in layer.modules():
        if isinstance(module, TensorQuantizer) and module.observer is not None and module.range_source is not RangeSource.FROZEN:
            changed.append((module, module.range_source))
            module.range_source = RangeSource.TENSOR
    try:
        yield
    finally:
        for module, source in changed:
            module.range_source = source


def quantized_output(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """``op(input_quant(x * m), weight_quant(W), bias)`` of a weight layer, without its output
    quantizer (``m`` its input multiplier, if any)."""
    with torch.no_grad():
        xq = layer._quant_input(x)
        weight = layer._quant_weight()
        bias = layer.quant_bias(xq if not isinstance(xq, torch.Tensor) else None, weight)
        return layer.quant_op(dequantize(xq), layer._weight_value(weight), dequantize(bias))


def float_output(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's float output on ``x`` (quantization disabled, input multiplier applied)."""
    with quantization_disabled(layer):
        return quantized_output(layer, x)


def relative_error(layer: QuantLayer, x: torch.Tensor, reference: torch.Tensor) -> float:
    """``||quantized_output(x) - reference||^2 / ||reference||^2`` (the report's error, see
    :mod:`qlayers.ptq.report`), static activation ranges from ``x`` itself unless frozen by
    calibration."""
    with own_ranges(layer):
        error = (quantized_output(layer, x) - reference).double().pow(2).sum()
    norm = reference.double().pow(2).sum()
    return float(error / norm) if norm > 0 else float(error)
