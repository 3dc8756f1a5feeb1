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

from . import channel_scales
from .clipping import search_clip, weight_error_score
from .graph import Forward
from .layer_inputs import relative_error
from .registry import register
from .report import PTQReport


def _check(model: nn.Module, *, grids_num=20, max_shrink=0.5, layers=None, **_: Any) -> dict:
    _check_options(grids_num, max_shrink)
    return channel_scales.check(model, "awq", layers)


def _preflight(model: nn.Module, batch: Any, forward: Forward, *, layers=None, fold=True, input_multiplier=True, **_: Any) -> None:
    channel_scales.preflight(model, batch, forward, algorithm="awq", layers=layers, fold=fold, input_multiplier=input_multiplier)


@register("awq", check=_check, preflight=_preflight)
def awq(
    model: nn.Module,
    data: Any,
    *,
    grids_num: int = 20,
    clip: bool = True,
    max_shrink: float = 0.5,
    layers: Optional[Sequence[str]] = None,
    fold: bool = True,
    input_multiplier: bool = True,
    max_rows: int = 512,
    forward: Forward = None,
    progress: bool = True,
) -> PTQReport:
    """Run AWQ's scale search and clip search on the quantized Linear/Conv layers of ``model``
    in place (see the module docstring).

    Args:
        model: a model quantized with :func:`qlayers.quantize_model` (before calibration).
        data: calibration batches (tensors, ``(input, target)`` tuples or dicts of model kwargs).
        grids_num: grid points of the scale search (AMCT's name and default, 20), also the
            resolution of the clip search.
        clip: run the clip search after the scale search.
        max_shrink: the clip search tries clipping ratios down to ``1 - max_shrink``.
        layers, fold, input_multiplier, forward, progress: as :func:`qlayers.ptq.smoothquant`.
        max_rows: input rows per layer the searches score candidates on.

    Returns:
        A :class:`~qlayers.ptq.report.PTQReport`: per layer the relative output error before
        and after, the chosen ratio ``r``, where the scale went and the clipping chosen.
    """
    _check_options(grids_num, max_shrink)

    def choose(layers_, rows, references, stats):
        ratio, s = _search_scale(layers_, rows, references, stats.absmean, grids_num)
        return s, f"r={ratio:.2f}"

    def finish(layer, x):
        return search_clip(layer, clip_ratios(grids_num, max_shrink), weight_error_score(layer.multiply_input(x)))

    return channel_scales.scale_groups(
        model, data, algorithm="awq", choose=choose, finish=finish if clip else None, layers=layers,
        fold_into_producer=fold, input_multiplier=input_multiplier, max_rows=max_rows, forward=forward, progress=progress,
    )


def _check_options(grids_num: Any, max_shrink: Any) -> None:
    if isinstance(grids_num, bool) or not isinstance(grids_num, int) or grids_num < 1:
        raise ValueError(f"awq: grids_num must be a positive int (AMCT default 20), got {grids_num!r}")
    if isinstance(max_shrink, bool) or not isinstance(max_shrink, (int, float)) or not 0 <= max_shrink < 1:
        raise ValueError(f"awq: max_shrink must be a number in [0, 1), got {max_shrink!r}")


def awq_scale(absmean: torch.Tensor, ratio: float) -> torch.Tensor:
    """``s = a^r / sqrt(max(a^r) min(a^r))`` with ``a = mean|X_j|`` (zeros lifted to 1e-4 first)."""
    s = absmean.double().clamp_min(1e-4).pow(ratio)
    return (s / (s.max() * s.min()).sqrt()).float()


def clip_ratios(grids_num: int, max_shrink: float) -> list:
    """``1 - i / grids_num`` for ``i < max_shrink * grids_num``: 1, 0.95, ..., 0.55 by default."""
    return [1 - i / grids_num for i in range(max(1, int(max_shrink * grids_num + 1e-9)))]


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
                error += relative_error(layer, rows, ref)
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
