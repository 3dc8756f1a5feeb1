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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..tensor.grouping import to_groups

GRANULARITIES = ("tensor", "channel", "group", "token")


@dataclass(frozen=True)
class Granularity:
    """Where scales are shared; see the module docstring. ``axis`` may be negative."""

    kind: str = "tensor"
    axis: int = 0
    group_size: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in GRANULARITIES:
            raise ValueError(f"granularity={self.kind!r} is unknown; allowed values: {', '.join(GRANULARITIES)}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {self.axis!r}")
        if self.kind == "group":
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0:
                raise ValueError(f"group_size must be a positive int for granularity='group', got {self.group_size!r}")

    @property
    def is_grouped(self) -> bool:
        return self.kind == "group"

    def resolve_axis(self, ndim: int) -> int:
        """``axis`` as a non-negative dimension of an ``ndim``-dimensional tensor."""
        if not -ndim <= self.axis < max(ndim, 1):
            raise ValueError(f"axis={self.axis} is out of range for a tensor with {ndim} dimensions")
        return self.axis % ndim if ndim else 0

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the layout statistics are reduced over (grouped and zero-padded for ``"group"``)."""
        if self.kind == "group":
            return to_groups(x, self.resolve_axis(x.ndim), self.group_size)
        return x

    def reduce_dims(self, x: torch.Tensor) -> Tuple[int, ...]:
        """Dimensions of ``self.layout(x)`` that one scale covers."""
        ndim = x.ndim
        if self.kind == "tensor" or ndim == 0:
            return tuple(range(ndim))
        axis = self.resolve_axis(ndim)
        if self.kind == "channel":
            return tuple(d for d in range(ndim) if d != axis)
        if self.kind == "group":
            return (axis + 1,)
        return (axis,)

    def amax(self, x: torch.Tensor) -> torch.Tensor:
        """max |x| per scale, shaped to broadcast against ``self.layout(x)`` (NaN propagates)."""
        grouped = self.layout(x)
        return _reduce(grouped.abs(), self.reduce_dims(x), torch.amax, self.kind)

    def min_max(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(min, max) per scale, shaped like :meth:`amax`."""
        grouped = self.layout(x)
        dims = self.reduce_dims(x)
        return _reduce(grouped, dims, torch.amin, self.kind), _reduce(grouped, dims, torch.amax, self.kind)


def _reduce(x: torch.Tensor, dims: Tuple[int, ...], op, kind: str) -> torch.Tensor:
    if x.numel() == 0:
        shape = [1 if d in dims else s for d, s in enumerate(x.shape)]
        if kind == "tensor":
            shape = []
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    if kind == "tensor":
        return op(x, dim=dims) if dims else x
    return op(x, dim=dims, keepdim=True)
