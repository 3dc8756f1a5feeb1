"""Granularity: which elements share one scale.

A :class:`Granularity` turns a tensor into the layout its statistics are reduced over and says
which dimensions to reduce:

- ``"tensor"``: one scale for the whole tensor (0-d scale).
- ``"channel"``: one scale per index of ``axis`` (a weight's output channels); the scale keeps the
  tensor's rank with size 1 elsewhere, e.g. ``(C, 1, 1, 1)`` for a conv weight.
- ``"group"``: blocks of ``group_size`` consecutive elements along ``axis`` (OCP MX, NVFP4, INT4
  per-group). The axis is zero-padded to a multiple of ``group_size`` and split in place into
  ``(n_groups, group_size)``; the scale has shape ``[..., n_groups, 1, ...]``.
- ``"token"``: one scale per row, reducing over ``axis`` (default the last, feature axis) only;
  computed at run time from each activation.
- ``"tile"``: 2-D blocks of ``tile_shape = (rows, cols)`` over dims 0 and 1 (e.g. 128x128 tiles of
  a weight; further dims, such as a conv kernel's, belong to the tile). Both dims are zero-padded
  to whole tiles; the layout is ``(R/rows, rows, C/cols, cols, ...)`` and the scale
  ``(R/rows, 1, C/cols, 1, ...)``. :meth:`Granularity.from_layout` returns to the original shape.

Reductions follow the NaN/Inf policy of :mod:`quantizers.scaling`: :meth:`Granularity.amax` and
:meth:`Granularity.min_max` read NaN and ±Inf as 0 (the statistics of the finite elements), unless
``keep_nonfinite=True`` asks :meth:`Granularity.amax` to mark granules holding them (block scales).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..tensor.grouping import to_groups

GRANULARITIES = ("tensor", "channel", "group", "token", "tile")


@dataclass(frozen=True)
class Granularity:
    """Where scales are shared; see the module docstring. ``axis`` may be negative."""

    kind: str = "tensor"
    axis: int = 0
    group_size: Optional[int] = None
    tile_shape: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.kind not in GRANULARITIES:
            raise ValueError(f"granularity={self.kind!r} is unknown; allowed values: {', '.join(GRANULARITIES)}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {self.axis!r}")
        if self.kind == "group":
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0:
                raise ValueError(f"group_size must be a positive int for granularity='group', got {self.group_size!r}")
        if self.kind == "tile":
            shape = self.tile_shape
            if not (isinstance(shape, tuple) and len(shape) == 2
                    and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
                raise ValueError(f"tile_shape must be a pair of positive ints for granularity='tile', got {shape!r}")

    @property
    def is_grouped(self) -> bool:
        return self.kind == "group"

    def resolve_axis(self, ndim: int) -> int:
        """``axis`` as a non-negative dimension of an ``ndim``-dimensional tensor."""
        if not -ndim <= self.axis < max(ndim, 1):
            raise ValueError(
                f"axis={self.axis} is out of range for a tensor with {ndim} dimensions; allowed: {-ndim}..{ndim - 1}"
            )
        return self.axis % ndim if ndim else 0

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the layout statistics are reduced over (grouped and zero-padded for ``"group"``)."""
        if self.kind == "group":
            return to_groups(x, self.resolve_axis(x.ndim), self.group_size)
        if self.kind == "tile":
            if x.ndim < 2:
                raise ValueError(f"granularity='tile' needs a tensor with at least 2 dimensions, got shape {tuple(x.shape)}")
            rows, cols = self.tile_shape
            return to_groups(to_groups(x, 1, cols), 0, rows)
        return x

    def from_layout(self, laid_out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """A tensor in the ``"tile"`` layout (or broadcastable to it) back in ``shape``."""
        full = laid_out.expand(*self.layout(torch.empty(shape, device="meta")).shape)
        merged = full.flatten(0, 1).flatten(1, 2)
        return merged[: shape[0], : shape[1]]

    def reduce_dims(self, x: torch.Tensor) -> Tuple[int, ...]:
        """Dimensions of ``self.layout(x)`` that one scale covers."""
        ndim = x.ndim
        if self.kind == "tensor" or ndim == 0:
            return tuple(range(ndim))
        if self.kind == "tile":
            return (1, 3, *range(4, ndim + 2))
        axis = self.resolve_axis(ndim)
        if self.kind == "channel":
            return tuple(d for d in range(ndim) if d != axis)
        if self.kind == "group":
            return (axis + 1,)
        return (axis,)

    def amax(self, x: torch.Tensor, keep_nonfinite: bool = False) -> torch.Tensor:
        """max |x| per scale over the finite elements (NaN and ±Inf read as 0), shaped to broadcast
        against ``self.layout(x)``. With ``keep_nonfinite=True`` NaN and Inf propagate instead: a
        granule holding NaN gives NaN, one holding ±Inf (and no NaN) gives Inf."""
        grouped = self.layout(x).abs()
        if not keep_nonfinite:
            grouped = torch.where(grouped < math.inf, grouped, 0.0)  # NaN and Inf fail "< inf"
        return _reduce(grouped, self.reduce_dims(x), torch.amax, self.kind)

    def min_max(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(min, max) per scale over the finite elements (NaN and ±Inf read as 0), shaped like
        :meth:`amax`."""
        grouped = finite_or_zero(self.layout(x))
        dims = self.reduce_dims(x)
        return _reduce(grouped, dims, torch.amin, self.kind), _reduce(grouped, dims, torch.amax, self.kind)


def finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN and ±Inf replaced by 0: what statistics see (the NaN/Inf policy). One
    comparison per element (``|x| < inf`` is false exactly for NaN and ±Inf), where
    ``nan_to_num`` makes three."""
    return torch.where(x.abs() < math.inf, x, 0.0)


def _reduce(x: torch.Tensor, dims: Tuple[int, ...], op, kind: str) -> torch.Tensor:
    if x.numel() == 0:
        shape = [1 if d in dims else s for d, s in enumerate(x.shape)]
        if kind == "tensor":
            shape = []
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    if kind == "tensor":
        return op(x, dim=dims) if dims else x
    return op(x, dim=dims, keepdim=True)
