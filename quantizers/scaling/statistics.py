"""Range statistics per scale: absolute maximum, min/max and percentiles.

Each function reduces the layout of a :class:`~quantizers.scaling.granularity.Granularity` and
returns tensors shaped to broadcast against it (0-d for per-tensor). NaN and ±Inf elements read as
0 (the NaN/Inf policy of :mod:`quantizers.scaling`); :func:`range_statistic` and
:func:`mark_nonfinite_blocks` keep them for block scales, which mark such blocks NaN.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Tuple, Union

import torch

from .granularity import Granularity, finite_or_zero


class Range(NamedTuple):
    """A ``(min, max)`` range statistic, each end shaped per scale (what asymmetric scale rules need)."""

    low: torch.Tensor
    high: torch.Tensor


#: A range statistic as a scale rule receives it: the absolute maximum (symmetric rules, scaler
#: ``needs == "absmax"``) or ``(min, max)`` (a :class:`Range` or plain pair; ``needs == "minmax"``).
Statistic = Union[torch.Tensor, Range, Tuple[torch.Tensor, torch.Tensor]]


def _flatten_reduced(x: torch.Tensor, granularity: Granularity) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """The layout with reduced dims moved last and merged, and the keepdim shape of one statistic."""
    layout = granularity.layout(x)
    dims = granularity.reduce_dims(x)
    kept = [d for d in range(layout.ndim) if d not in dims]
    moved = (layout.permute(*kept, *dims) if layout.ndim else layout).reshape(*[layout.shape[d] for d in kept], -1)
    if granularity.kind == "tensor":
        shape: Tuple[int, ...] = ()
    else:
        shape = tuple(1 if d in dims else layout.shape[d] for d in range(layout.ndim))
    return moved, shape


def percentile(x: torch.Tensor, granularity: Granularity, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0 < q <= 100) of each granule of ``x``.

    Uses the order statistic of rank ``k = floor(q/100 * n + 0.5)`` (at least 1), as Brevitas's
    percentile statistic does; ``kthvalue`` handles tensors of any size. NaN and ±Inf elements
    rank as zeros.
    """
    if not 0 < q <= 100:
        raise ValueError(f"percentile q={q!r} must lie in (0, 100]")
    flat, shape = _flatten_reduced(finite_or_zero(x), granularity)
    n = flat.shape[-1]
    if n == 0:
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    k = min(max(1, int(math.floor(q / 100 * n + 0.5))), n)
    return flat.kthvalue(k, dim=-1).values.reshape(shape)


def abs_percentile(x: torch.Tensor, granularity: Granularity, q: float) -> torch.Tensor:
    """``percentile(|x|, q)``: a clipped absolute maximum."""
    return percentile(x.abs(), granularity, q)


def min_max_percentile(
    x: torch.Tensor, granularity: Granularity, q: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Percentiles ``100 - q`` and ``q``: a clipped (min, max)."""
    low = percentile(x, granularity, 100 - q) if q < 100 else granularity.min_max(x)[0]
    return low, percentile(x, granularity, q)


def range_statistic(x: torch.Tensor, granularity: Granularity, needs: str, nan_blocks: bool = False) -> Statistic:
    """``granularity.amax(x)`` or ``granularity.min_max(x)``, as ``needs`` says, over the finite
    elements; with ``nan_blocks`` (block scales) an absmax is NaN/Inf where the granule holds
    NaN/Inf, so the block scale marks it."""
    if needs == "absmax":
        return granularity.amax(x, keep_nonfinite=nan_blocks)
    return granularity.min_max(x)


def mark_nonfinite_blocks(stat: torch.Tensor, x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """An absmax statistic ``stat`` (e.g. MSE-searched or clipped) made NaN where the granule of
    ``x`` holds NaN or ±Inf: what block scales (``nan_blocks``) need from any range method."""
    return torch.where(torch.isfinite(granularity.amax(x, keep_nonfinite=True)), stat, torch.nan)
