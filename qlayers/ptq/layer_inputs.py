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

from ..model.calibrate import _default_forward, _progress, _to_device
from ..model.qat import quantization_disabled
from ..quant_layer import QuantLayer, dequantize

Forward = Callable[[nn.Module, Any], Any]


@dataclass
class LayerInputs:
    """Per-channel ``absmax`` and ``absmean`` of a layer's input over all the data, and ``rows``:
    a sample of the inputs (``(N, C)`` for a Linear, ``(N, C, ...)`` for a Conv)."""

    absmax: torch.Tensor
    absmean: torch.Tensor
    rows: torch.Tensor
    count: int = 0
    parts: List[torch.Tensor] = field(default_factory=list, repr=False)


def calibration_batches(data: Any, name: str = "data") -> List[Any]:
    """``data`` as a list of batches (it is iterated more than once); empty data raises."""
    if isinstance(data, (torch.Tensor, dict)):
        batches = [data]
    else:
        try:
            batches = list(data)
        except TypeError:
            raise TypeError(f"{name} must be an iterable of batches (tensors, tuples or dicts), got {type(data).__name__}") from None
    if not batches:
        raise ValueError(f"{name} is empty: calibration needs at least one batch")
    return batches


def model_device(model: nn.Module) -> Optional[torch.device]:
    return next((t.device for t in list(model.parameters()) + list(model.buffers())), None)


def run(model: nn.Module, batches: Sequence[Any], forward: Optional[Forward] = None, desc: str = "") -> None:
    """Run every batch through ``model`` (no grad, on the model's device)."""
    device = model_device(model)
    with torch.no_grad():
        for batch in _progress(batches, len(batches), bool(desc)) if desc else batches:
            (forward or _default_forward)(model, _to_device(batch, device))


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
        with quantization_disabled(model) if float_model else contextlib.nullcontext():
            run(model, batches, forward)
    finally:
        for handle in handles:
            handle.remove()
    for name in names:
        if name not in found:
            raise ValueError(f"layer {name!r} received no input from the calibration data; leave it out of `layers`")
        stats = found[name]
        stats.rows, stats.parts = torch.cat(stats.parts)[:max_rows], []
    return found


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


def output_error(layer: QuantLayer, x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean squared error of :func:`quantized_output` against ``reference`` (static activation
    ranges from ``x`` itself unless frozen by calibration)."""
    with own_ranges(layer):
        return float((quantized_output(layer, x) - reference).pow(2).mean())
