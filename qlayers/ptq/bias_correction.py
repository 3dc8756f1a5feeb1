"""Bias correction (Nagel et al. 2019, Brevitas's ``bias_correction_mode``): remove the mean
output error that weight quantization adds, from calibration inputs.

Layer by layer in the order the model runs them (:mod:`qlayers.ptq.runner`: the model quantized,
earlier layers already corrected), the layer's captured inputs, quantized by its input quantizer
as the layer multiplies them (``x``), give per output channel ``o``::

    c_o = E[ op(x, W_q) - op(x, W) ]_o        (mean over samples and positions, over all ranks)
    b_o <- b_o - c_o

so that the quantized layer's output is unbiased on the calibration data. A layer without a bias
gets one (a new ``bias`` parameter).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..quant_layer import dequantize
from .capture import Forward
from .distributed import all_reduce_sum
from .registry import register
from .report import PTQReport
from .runner import run_layer_by_layer
from .targets import select_layers


def _applies(layer: nn.Module) -> Optional[str]:
    if getattr(layer, "weight_quant", None) is None:
        return "its weight is not quantized"
    if not hasattr(layer, "quant_op") or isinstance(layer, nn.Embedding):
        return f"{type(layer).__name__} has no bias to correct"
    return None


def _check(model: nn.Module, *, layers: Optional[Sequence[str]] = None, **_: Any) -> Dict[str, nn.Module]:
    return select_layers(model, "bias_correction", _applies, layers)[0]


@register("bias_correction", check=_check)
def bias_correction(
    model: nn.Module, data: Any, *, layers: Optional[Sequence[str]] = None, forward: Forward = None, progress: bool = True,
) -> PTQReport:
    """Correct the biases of the quantized Linear/Conv layers of ``model`` in place (see the
    module docstring). Run it last: after calibration (activation ranges as they will be used) and
    after any weight-changing algorithm (SmoothQuant, AWQ, equalization, GPTQ).

    Args:
        model: a quantized model (:func:`qlayers.quantize_model`), calibrated if it quantizes activations.
        data: calibration batches (tensors, ``(input, target)`` tuples or dicts of model kwargs).
        layers: name patterns of the layers to correct (default: every layer with a weight quantizer).
        forward: ``forward(model, batch)`` for batches the default call does not fit.
        progress: show a tqdm bar (when tqdm is installed).

    Returns:
        A :class:`~qlayers.ptq.report.PTQReport`, the relative output error of each layer before
        and after its correction.
    """
    targets, skipped = select_layers(model, "bias_correction", _applies, layers)
    return run_layer_by_layer(model, data, targets, _correct, algorithm="bias_correction", forward=forward,
                              progress=progress, skipped=skipped)


@torch.no_grad()
def _correct(name: str, layer: nn.Module, inputs: List[torch.Tensor]) -> str:
    weight = layer._quant_weight().value
    axis = -1 if isinstance(layer, nn.Linear) else 1
    total = torch.zeros(weight.shape[0] + 1, dtype=torch.float64, device=weight.device)
    for x in inputs:
        x = dequantize(layer._quant_input(x))
        d = layer.quant_op(x, weight, None) - layer.quant_op(x, layer.weight, None)
        flat = d.movedim(axis, -1).reshape(-1, d.shape[axis]).double()
        total[:-1] += flat.sum(0)
        total[-1] += flat.shape[0]
    all_reduce_sum(total)
    c = total[:-1] / total[-1].clamp_min(1)
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(c.numel(), dtype=layer.weight.dtype, device=layer.weight.device))
    layer.bias.sub_(c.to(layer.bias))
    return f"max |correction| {float(c.abs().max()):.3g}"
