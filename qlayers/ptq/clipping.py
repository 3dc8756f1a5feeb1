"""Weight clipping search, shared by AWQ and OFMR: each set of weights that shares a scale is
clipped to ``c * [min, max]`` of its values for every candidate ``c``, quantized by the layer's own
weight quantizer, and keeps the ``c`` whose share of the output error is least.

The sets ("units") follow the weight quantizer's granularity: a group of a Linear's input features
(``"group"``, scored by its partial products), an output channel (``"row"``: per-channel scales, or
groups of a Conv scored per output channel), or the whole tensor (``"tensor"``: per-tensor scales,
2-D tiles, anything whose scales are not independent). The clipped weight becomes the layer's
float weight.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from quantizers.tensor.grouping import from_groups

#: ``score(layer, quantized_clipped_weight, units) -> per-unit error`` (shape ``(O, G)`` for
#: groups, ``(O,)`` for rows, ``(1,)`` for the tensor).
Score = Callable[[nn.Module, torch.Tensor, str], torch.Tensor]


@torch.no_grad()
def search_clip(layer: nn.Module, ratios: Sequence[float], score: Score, allow_groups: bool = True) -> str:
    """Clip ``layer``'s weight per unit at the ratio of ``ratios`` with the least ``score`` (see
    the module docstring); returns a summary of the chosen ratios."""
    quantizer = layer.weight_quant
    granularity = getattr(quantizer, "granularity", None)
    if granularity is None:
        return "no clip search (no weight quantizer)"
    weight = layer.weight.detach().clone()
    laid = granularity.layout(weight)
    dims = granularity.reduce_dims(weight)
    low, high = laid.amin(dim=dims, keepdim=True), laid.amax(dim=dims, keepdim=True)
    units = unit_kind(layer, granularity, allow_groups)
    best_error = best_ratio = None
    best_weight = weight
    for ratio in ratios:
        clipped = _unlayout(granularity, torch.maximum(torch.minimum(laid, ratio * high), ratio * low), weight.shape)
        error = score(layer, quantizer(clipped).value, units)
        if best_error is None:
            best_error, best_ratio, best_weight = error, torch.full_like(error, ratio), clipped
            continue
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_ratio = torch.where(better, torch.full_like(error, ratio), best_ratio)
        best_weight = torch.where(_expand(better, units, weight, granularity), clipped, best_weight)
    layer.weight.copy_(best_weight)
    low_ratio, high_ratio = float(best_ratio.min()), float(best_ratio.max())
    return f"clip {low_ratio:.2f}" if low_ratio == high_ratio else f"clip {low_ratio:.2f}..{high_ratio:.2f}"


def unit_kind(layer: nn.Module, granularity, allow_groups: bool = True) -> str:
    """``"group"``, ``"row"`` or ``"tensor"``: the weight sets whose errors are scored apart."""
    ndim = layer.weight.dim()
    if granularity.kind == "channel" and granularity.resolve_axis(ndim) == 0:
        return "row"
    if granularity.kind == "group" and granularity.resolve_axis(ndim) == 1:
        return "group" if allow_groups and isinstance(layer, nn.Linear) else "row"
    return "tensor"


def output_unit_errors(layer: nn.Module, error: torch.Tensor, units: str) -> torch.Tensor:
    """Squared output ``error`` summed per output channel (``units`` ``"row"``) or in total."""
    if units == "tensor":
        return error.pow(2).sum().reshape(1)
    axis = -1 if isinstance(layer, nn.Linear) else 1
    return error.movedim(axis, 0).reshape(error.shape[axis], -1).pow(2).sum(1)


def weight_error_score(x: torch.Tensor) -> Score:
    """AWQ's score: the output error of the weight alone, ``op(x, W_q - W)``, per unit (group
    units by their partial products ``sum_n (x_n,g . dW_o,g)^2``)."""
    def score(layer: nn.Module, quantized: torch.Tensor, units: str) -> torch.Tensor:
        delta = quantized - layer.weight
        if units == "group":
            granularity = layer.weight_quant.granularity
            size = granularity.group_size
            xg = granularity.layout(x).reshape(x.shape[0], -1, size)
            dg = granularity.layout(delta).reshape(delta.shape[0], -1, size)
            return torch.einsum("ngk,ogk->nog", xg, dg).pow(2).sum(0)
        return output_unit_errors(layer, layer.quant_op(x, delta, None), units)
    return score


def _unlayout(granularity, laid: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of ``granularity.layout`` for a tensor of ``shape``."""
    if granularity.kind == "group":
        return from_groups(laid, granularity.resolve_axis(len(shape)), shape)
    if granularity.kind == "tile":
        return granularity.from_layout(laid, shape)
    return laid


def _expand(better: torch.Tensor, units: str, weight: torch.Tensor, granularity) -> torch.Tensor:
    """The per-unit choice ``better`` spread over the weight's elements."""
    if units == "group":
        laid = granularity.layout(weight)
        return _unlayout(granularity, better.reshape(better.shape + (1,)).expand_as(laid), weight.shape)
    if units == "row":
        return better.reshape([-1] + [1] * (weight.dim() - 1))
    return better.reshape([1] * weight.dim())
