"""The layer-by-layer runner: one target layer at a time, in the order the model runs them.

For each layer: capture its inputs over all calibration batches (forward hooks, the forward
stopping right after the layer when it runs once per forward; the model as it is now, so layers
already processed run quantized, as sequential GPTQ wants), measure its output error, call the
algorithm's ``step(name, layer, inputs)``, measure again, and drop the inputs before the next
layer: only one layer's inputs are held at a time. The model runs in eval mode (observers are not
updated) and under ``torch.no_grad``; its mode is restored afterwards. A tqdm progress bar is shown
when tqdm is installed and ``progress=True``.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..model.calibrate import _progress
from ..quant_layer import dequantize
from .capture import Forward, as_batches, capture_inputs, check_data
from .distributed import all_reduce_sum
from .report import LayerReport, PTQReport
from .targets import Skipped

Step = Callable[[str, nn.Module, List[torch.Tensor]], Optional[str]]  # -> a note for the report, or None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` (every submodule) in eval mode inside the block, each module's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def output_error(layer: nn.Module, inputs: Sequence[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor]) -> float:
    """``sum ||layer(x) - op(x, weight, bias)||^2 / sum ||op(x, weight, bias)||^2`` over ``inputs``
    (summed over ranks), with ``op`` the layer's float operation (see :mod:`qlayers.ptq.report`)
    on ``x`` times the layer's input multiplier, if any."""
    sums = torch.zeros(2, dtype=torch.float64, device=weight.device)
    with torch.no_grad():
        for x in inputs:
            reference = layer.quant_op(layer.multiply_input(x), weight, bias).double()
            sums[0] += (dequantize(layer(x)).double() - reference).pow(2).sum()
            sums[1] += reference.pow(2).sum()
    all_reduce_sum(sums)
    return float(sums[0] / sums[1]) if sums[1] > 0 else float(sums[0])


def run_layer_by_layer(
    model: nn.Module,
    data: Any,
    targets: Mapping[str, nn.Module],
    step: Step,
    *,
    algorithm: str,
    forward: Forward = None,
    progress: bool = True,
    skipped: Skipped = (),
) -> PTQReport:
    """Run ``step`` on every layer of ``targets`` (see the module docstring); returns the report."""
    batches = as_batches(data)
    rows = []
    with eval_mode(model):
        order, calls = check_data(model, batches, targets, forward)
        for name in _progress(order, len(order), progress, desc=algorithm):
            layer = targets[name]
            inputs = capture_inputs(model, batches, {name: layer}, forward, stop_early=calls[name] == 1)[name]
            weight, bias = layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
            before = output_error(layer, inputs, weight, bias)
            start = time.perf_counter()
            note = step(name, layer, inputs)
            seconds = time.perf_counter() - start
            after = output_error(layer, inputs, weight, bias)
            rows.append(LayerReport(name, algorithm, before, after, seconds, note or ""))
            del inputs
    return PTQReport(tuple(rows), tuple(skipped))
