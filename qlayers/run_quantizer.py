"""Calling a quantizer module from a layer, eager or under ``torch.compile``.

Eager mode calls the module. Under ``torch.compile`` a calibrated static activation quantizer in
eval mode is evaluated here from its observer's aggregate instead: ``TensorQuantizer.forward``
asks ``bool(observer.initialized)`` (a tensor) to choose between the aggregate and the batch's own
range, which ``fullgraph=True`` cannot trace. Here the test is the shape of the aggregate (empty
until the first batch), which the compiler guards on. The result is the same as eager: the scale
comes from the aggregate; an uncalibrated quantizer uses the batch's own range. (Once
``TensorQuantizer`` keeps a Python-level "initialized" flag this module reduces to the call.)
"""
from __future__ import annotations

import torch
from torch import nn

from quantizers import QuantTensor, TensorQuantizer


def run_quantizer(quantizer: nn.Module, x: torch.Tensor) -> QuantTensor:
    """``quantizer(x)``, traceable by ``torch.compile(fullgraph=True)`` for static quantizers."""
    if (
        torch.compiler.is_compiling()
        and isinstance(quantizer, TensorQuantizer)
        and quantizer.observer is not None
        and not (quantizer.training or quantizer.calibrating)
    ):
        return _static_eval_quantize(quantizer, x)
    return quantizer(x)


def _static_eval_quantize(quantizer: TensorQuantizer, x: torch.Tensor) -> QuantTensor:
    observer = quantizer.observer
    if observer.high.numel() == 0:  # never calibrated: the batch's own range, as eager does
        stat = quantizer.statistic(x)
    elif quantizer.scaler.needs == "minmax":
        stat = (observer.low, observer.high)
    else:
        stat = observer.high
    scales = quantizer.scaler(stat)
    value_ = quantizer._fake_quantize(quantizer.granularity.layout(x), scales)
    return quantizer._wrap(x, value_, scales)
