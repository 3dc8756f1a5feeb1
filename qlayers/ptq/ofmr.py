"""OFMR, AMCT's algorithm for FP8/HiFloat8 full (weight + activation) quantization: a search of
the activation and weight scales that minimises each layer's output error on calibration data.

AMCT names the algorithm but not its objective; qzoo's, per quantized Linear/Conv layer with
calibration inputs ``x`` (the float network's, at most ``max_rows`` rows) and float output
``y = op(x, W) + b``:

1. **Activation scale** (layers whose input quantizer is static, i.e. calibrated)::

       a* = argmin_a  sum_n || op(Q_x(x; a * R), Q_w(W)) + b - y ||^2

   where ``R`` is the calibrated range (the observer's aggregate) and ``a`` runs over ``ratios``
   (default ``2^(k/4)`` for ``k = -12 .. 4``: 1/8 to 2, four points per octave). Formats whose
   scale is a power of two (HiFloat8's MSE default, MX) change only when ``a * R`` crosses a power
   of two, so their grid is effectively whole octaves. The chosen range is written into the
   observer.
2. **Weight scale**, with the input quantized at ``a*``: the weight is clipped to ``c * [min, max]``
   of each scale's set of weights for the ratios ``c <= 1`` of the grid, and every output channel
   (per-channel weight scales) or the whole tensor (per-tensor) keeps its ``c`` of least
   ``sum_n || op(Q_x(x), Q_w(W_c)) + b - y ||^2`` over that channel's outputs
   (:mod:`qlayers.ptq.clipping`); clipping is how a scale is lowered for any format, since the
   weight quantizer takes its scale from the weight itself.

``ratio = 1`` is in the grid, so neither step can increase the error it minimises.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..model.calibrate import calibrate
from ..quant_layer import dequantize
from .capture import Forward, as_batches
from .clipping import output_unit_errors, search_clip
from .layer_inputs import float_output, quantized_output
from .registry import register
from .report import PTQReport
from .runner import run_layer_by_layer
from .targets import select_layers

DEFAULT_RATIOS = tuple(float(2.0 ** (k / 4)) for k in range(-12, 5))


def _applies(layer: nn.Module) -> Optional[str]:
    if getattr(layer, "weight_quant", None) is None:
        return "its weight is not quantized"
    if not isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
        return f"OFMR tunes Linear and Conv layers, not {type(layer).__name__}"
    return None


def _check(model: nn.Module, *, ratios=None, layers=None, **_: Any) -> Dict[str, nn.Module]:
    _ratios(ratios)
    return select_layers(model, "ofmr", _applies, layers)[0]


@register("ofmr", check=_check)
def ofmr(
    model: nn.Module, data: Any, *, ratios: Optional[Sequence[float]] = None, layers: Optional[Sequence[str]] = None,
    max_rows: int = 4096, forward: Forward = None, progress: bool = True,
) -> PTQReport:
    """Search each layer's activation and weight scales (see the module docstring) in place,
    layer by layer in the order the model runs them (:mod:`qlayers.ptq.runner`: each layer sees
    the inputs of the model quantized up to it, earlier layers already tuned).

    Args:
        model: a quantized model (:func:`qlayers.quantize_model`, typically FP8 or HiFloat8 weights
            and inputs); calibrated here first if any of its static quantizers is not.
        data: calibration batches (tensors, ``(input, target)`` tuples or dicts of model kwargs).
        ratios: the grid of multiples of the calibrated range (default ``DEFAULT_RATIOS``).
        layers: name patterns of the layers to tune (default: every Linear/Conv with a weight quantizer).
        max_rows: input rows per layer the search scores candidates on (taken evenly).
        forward: ``forward(model, batch)`` for batches the default call does not fit.
        progress: show a tqdm bar (when tqdm is installed).
    """
    grid = _ratios(ratios)
    batches = as_batches(data)
    targets, skipped = select_layers(model, "ofmr", _applies, layers)
    if any(_observer(layer) is not None and not _observer(layer).is_initialized for layer in targets.values()):
        calibrate(model, batches, forward=forward, progress=False)

    def step(name: str, layer: nn.Module, inputs: List[torch.Tensor]) -> str:
        x = _rows(layer, inputs, max_rows)
        y = float_output(layer, x)
        detail = _search_activation(layer, x, y, grid)
        clips = sorted((r for r in grid if r <= 1), reverse=True)  # 1 first: ties keep the weight
        return detail + ", weight " + search_clip(layer, clips, _output_score(layer, x, y), allow_groups=False)

    return run_layer_by_layer(model, batches, targets, step, algorithm="ofmr", forward=forward, progress=progress, skipped=skipped)


def _rows(layer: nn.Module, inputs: List[torch.Tensor], max_rows: int) -> torch.Tensor:
    """The captured inputs as one tensor: ``(N, C)`` rows for a Linear, samples for a Conv, at most
    ``max_rows`` of them, evenly strided."""
    x = torch.cat([t.reshape(-1, t.shape[-1]) if isinstance(layer, nn.Linear) else t for t in inputs])
    return x[:: max(1, -(-x.shape[0] // max_rows))]


def _observer(layer: nn.Module):
    return getattr(getattr(layer, "input_quant", None), "observer", None)


def _error(layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((quantized_output(layer, x) - y).pow(2).mean())


@torch.no_grad()
def _search_activation(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, ratios: Sequence[float]) -> str:
    observer = _observer(layer)
    if observer is None or not observer.is_initialized:
        return "activation: dynamic or none"
    low, high = observer.low.clone(), observer.high.clone()
    best = (_error(layer, x, y), 1.0)  # ties keep the calibrated range
    for ratio in ratios:
        observer.low, observer.high = low * ratio, high * ratio
        error = _error(layer, x, y)
        if error < best[0]:
            best = (error, ratio)
    observer.low, observer.high = low * best[1], high * best[1]
    return f"activation range x{best[1]:.3g}"


@torch.no_grad()
def _output_score(layer: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The clip search's score: ``op(Q_x(x), W_q) + b - y`` per unit, the input quantized once."""
    xq = layer._quant_input(x)
    bias = dequantize(layer.quant_bias(xq if not isinstance(xq, torch.Tensor) else None, layer._quant_weight()))
    xq = dequantize(xq)

    def score(layer: nn.Module, quantized: torch.Tensor, units: str) -> torch.Tensor:
        return output_unit_errors(layer, layer.quant_op(xq, quantized, bias) - y, units)
    return score


def _ratios(ratios: Optional[Sequence[float]]) -> tuple:
    if ratios is None:
        return DEFAULT_RATIOS
    values = tuple(ratios) if isinstance(ratios, (list, tuple)) else None
    if not values or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in values):
        raise ValueError(f"ofmr: ratios must be a non-empty list of positive numbers (multiples of the calibrated range), got {ratios!r}")
    if 1 not in values:
        values = values + (1.0,)
    return values
