"""Bias correction (Nagel et al. 2019, Brevitas's ``bias_correction_mode``): remove the mean
output error that weight quantization adds, from calibration inputs.

Layer by layer in module order, with the model quantized (earlier layers already corrected), the
calibration data runs up to the layer, whose input ``x`` (after its input quantizer, as the layer
multiplies it) gives per output channel ``o``::

    c_o = E[ op(x, W_q) - op(x, W) ]_o        (mean over samples and positions)
    b_o <- b_o - c_o

so that the quantized layer's output is unbiased on the calibration data. A layer without a bias
gets one. The report gives, per layer, the weight-quantization output MSE ``E[(op(x, W_q) -
op(x, W))^2]`` before and ``E[(op(x, W_q) - op(x, W) - c)^2]`` after.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..model.qat import quant_layers
from ..quant_layer import dequantize
from ..weight_layer import QuantWeightLayer
from .graph import Forward
from .layer_inputs import calibration_batches, run
from .results import AlgorithmReport, LayerResult


class _Stop(Exception):
    """Ends a forward once the layer of interest has run."""


def bias_correction(
    model: nn.Module, data: Any, *, layers: Optional[Sequence[str]] = None, forward: Optional[Forward] = None,
) -> AlgorithmReport:
    """Correct the biases of the quantized Linear/Conv layers of ``model`` in place (see the
    module docstring). Run it after calibration (activation ranges as they will be used) and after
    any weight-changing algorithm (SmoothQuant, AWQ, equalization, GPTQ).

    Args:
        model: a quantized model (:func:`qlayers.quantize_model`), calibrated if it quantizes activations.
        data: calibration batches (tensors, ``(input, target)`` tuples or dicts of model kwargs).
        layers: name patterns of the layers to correct (default: every layer with a weight quantizer).
        forward: ``forward(model, batch)`` for batches the default call does not fit.
    """
    batches = calibration_batches(data)
    names = [
        name for name, layer in quant_layers(model, layers)
        if isinstance(layer, QuantWeightLayer) and layer.weight_quant is not None and hasattr(layer, "quant_op")
        and not isinstance(layer, nn.Embedding)
    ]
    if not names:
        raise ValueError(f"bias_correction: no quantized Linear/Conv layer with a weight quantizer {'matches ' + repr(list(layers)) if layers else 'in the model'}")
    was_training = model.training
    model.eval()
    run(model, batches[:1], forward)  # a first call may run checks (qlayers.model.functional): not cut short
    report = AlgorithmReport("bias_correction")
    try:
        for name in names:
            report.layers.append(_correct(model, name, batches, forward))
    finally:
        model.train(was_training)
    return report


@torch.no_grad()
def _correct(model: nn.Module, name: str, batches, forward) -> LayerResult:
    layer = dict(model.named_modules())[name]
    sums = {"d": None, "d2": 0.0, "n": 0}

    def hook(module, args):
        x = dequantize(layer._quant_input(args[0]))
        weight = layer._quant_weight()
        if weight is None:
            raise _Stop
        d = layer.quant_op(x, weight.value, None) - layer.quant_op(x, layer.weight, None)
        axis = -1 if isinstance(layer, nn.Linear) else 1
        flat = d.movedim(axis, -1).reshape(-1, d.shape[axis]).double()
        sums["d"] = flat.sum(0) if sums["d"] is None else sums["d"] + flat.sum(0)
        sums["d2"] += float(flat.pow(2).sum())
        sums["n"] += flat.shape[0]
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        for batch in batches:
            try:
                run(model, [batch], forward)
            except _Stop:
                pass
    finally:
        handle.remove()
    if sums["d"] is None:
        raise ValueError(f"bias_correction: layer {name!r} received no input from the calibration data; leave it out of `layers`")
    n, channels = sums["n"], sums["d"].numel()
    c = sums["d"] / n
    before = sums["d2"] / (n * channels)
    after = before - float(c.pow(2).mean())
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(channels, dtype=layer.weight.dtype, device=layer.weight.device))
    layer.bias.sub_(c.to(layer.bias))
    return LayerResult(name, before, max(after, 0.0), f"max |correction| {float(c.abs().max()):.3g}")
