"""AWQ (Lin et al. 2024): activation-aware per-input-channel scales found by a grid search, then a
search of the weight clipping range; format-generic (each candidate is scored through the layer's
own quantizers).

Scale search, for a group of layers sharing one input ``X`` (calibration sample, float network)::

    s(r) = a^r / sqrt(max(a^r) * min(a^r)),   a_j = mean|X_j|,   r = i / grids_num, i = 0 .. grids_num - 1
    r* = argmin_r  sum over the group's layers of  mean (Q(X / s(r)) Q(W * s(r))^T - X W^T)^2

where ``Q(X / s)`` is the layer's input quantizer (its range taken from the sample) and
``Q(W * s)`` its weight quantizer; ``r = 0`` (``s = 1``) is plain rounding, so the chosen scale is
never worse than RTN on the sample. ``1 / s(r*)`` is folded into the preceding op or kept as an
input multiplier (:mod:`qlayers.ptq.fold`).

Clip search, then, per layer: each set of weights that shares a scale (a group, an output
channel, or the whole tensor, per the weight quantizer's granularity) is clipped to
``c * [min, max]`` of its values, with ``c = 1 - i / grids_num`` for ``i < max_shrink *
grids_num`` (1, 0.95, ..., 0.55 for the defaults), and each set keeps the ``c`` that minimises its
share of the output error ``sum_n (X_n,set . (Q(W_clipped) - W)_set)^2`` (float inputs). The
clipped weight is the layer's new float weight. Sets whose scales are not independent (2-D tiles,
per-tensor) take one ``c`` for the whole tensor.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..quant_layer import _along_channels
from . import channel_scales, fold
from .clipping import search_clip, weight_error_score
from .graph import Forward
from .layer_inputs import calibration_batches, collect_inputs, float_output, output_error
from .results import AlgorithmReport, LayerResult


def awq(
    model: nn.Module,
    data: Any,
    grids_num: int = 20,
    *,
    clip: bool = True,
    max_shrink: float = 0.5,
    layers: Optional[Sequence[str]] = None,
    fold: bool = True,
    input_multiplier: bool = True,
    max_rows: int = 512,
    forward: Optional[Forward] = None,
) -> AlgorithmReport:
    """Run AWQ's scale search and clip search on the quantized Linear/Conv layers of ``model``
    in place (see the module docstring).

    Args:
        model: a model quantized with :func:`qlayers.quantize_model` (before calibration).
        data: calibration batches (tensors, ``(input, target)`` tuples or dicts of model kwargs).
        grids_num: grid points of the scale search (AMCT's name and default, 20), also the
            resolution of the clip search.
        clip: run the clip search after the scale search.
        max_shrink: the clip search tries clipping ratios down to ``1 - max_shrink``.
        layers, fold, input_multiplier, forward: as :func:`qlayers.ptq.smoothquant`.
        max_rows: input rows per layer the searches score candidates on.

    Returns:
        An :class:`~qlayers.ptq.results.AlgorithmReport`: per layer the output MSE before and
        after, the chosen ratio ``r`` and where the scale went.
    """
    if isinstance(grids_num, bool) or not isinstance(grids_num, int) or grids_num < 1:
        raise ValueError(f"awq: grids_num must be a positive int (AMCT default 20), got {grids_num!r}")
    if isinstance(max_shrink, bool) or not isinstance(max_shrink, (int, float)) or not 0 <= max_shrink < 1:
        raise ValueError(f"awq: max_shrink must be a number in [0, 1), got {max_shrink!r}")
    batches = calibration_batches(data)
    names = channel_scales.target_layers(model, layers, "awq")
    groups = channel_scales.plan(
        model, names, batches[0], fold_into_producer=fold, input_multiplier=input_multiplier,
        algorithm="awq", forward=forward,
    )
    inputs = collect_inputs(model, names, batches, max_rows=max_rows, forward=forward)
    modules = dict(model.named_modules())
    report = AlgorithmReport("awq", options={"grids_num": grids_num, "clip": clip})
    for group in groups:
        layers_ = [modules[n] for n in group.consumers]
        rows = inputs[group.consumers[0]].rows
        references = [float_output(layer, rows) for layer in layers_]
        before = [output_error(layer, rows, ref) for layer, ref in zip(layers_, references)]
        ratio, s = _search_scale(layers_, rows, references, inputs[group.consumers[0]].absmean, grids_num)
        channel_scales.commit(model, group, s)
        for name, layer, ref, err in zip(group.consumers, layers_, references, before):
            x = channel_scales.inputs_after(group, layer, rows, s)
            detail = f"r={ratio:.2f}, {group.describe()}"
            if clip:
                detail += ", " + search_clip(layer, clip_ratios(grids_num, max_shrink), weight_error_score(_weight_input(layer, x)))
            report.layers.append(LayerResult(name, err, output_error(layer, x, ref), detail))
    return report


def awq_scale(absmean: torch.Tensor, ratio: float) -> torch.Tensor:
    """``s = a^r / sqrt(max(a^r) min(a^r))`` with ``a = mean|X_j|`` (zeros lifted to 1e-4 first)."""
    s = absmean.double().clamp_min(1e-4).pow(ratio)
    return (s / (s.max() * s.min()).sqrt()).float()


def clip_ratios(grids_num: int, max_shrink: float) -> list:
    """``1 - i / grids_num`` for ``i < max_shrink * grids_num``: 1, 0.95, ..., 0.55 by default."""
    return [1 - i / grids_num for i in range(max(1, int(max_shrink * grids_num + 1e-9)))]


def _weight_input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the weight multiplies: ``x`` times the layer's input multiplier, if any."""
    multiplier = layer._buffers.get("input_multiplier")
    if multiplier is None:
        return x
    return x * _along_channels(multiplier.to(x), x.dim(), fold.input_channel_axis(layer))


@torch.no_grad()
def _search_scale(layers, rows, references, absmean, grids_num):
    originals = [layer.weight.detach().clone() for layer in layers]
    best = (float("inf"), 0.0, torch.ones_like(absmean))
    for i in range(grids_num):
        ratio = i / grids_num
        s = awq_scale(absmean, ratio)
        error = 0.0
        for layer, weight, ref in zip(layers, originals, references):
            with _scaled(layer, weight, s):
                error += output_error(layer, rows, ref)
        if error < best[0]:
            best = (error, ratio, s)
    return best[1], best[2]


class _scaled:
    """Temporarily ``W * s`` and an input multiplier ``1 / s`` (the float function unchanged)."""

    def __init__(self, layer, weight, s):
        self.layer, self.weight, self.s = layer, weight, s

    def __enter__(self):
        shape = [1] * self.weight.dim()
        shape[1] = -1
        self.old = self.layer._buffers.get("input_multiplier")
        self.layer.weight.copy_(self.weight * self.s.to(self.weight).reshape(shape))
        inverse = 1.0 / self.s
        self.layer.set_input_multiplier(inverse if self.old is None else self.old * inverse.to(self.old))

    def __exit__(self, *exc):
        self.layer.weight.copy_(self.weight)
        self.layer.set_input_multiplier(self.old)
