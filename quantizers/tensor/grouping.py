"""Groupwise layout: split one axis of a tensor into ``(n_groups, group_size)`` and back.

The grouped layout is Brevitas's: for ``x`` of shape ``(..., L, ...)`` with the group axis ``d`` of
length ``L``, ``to_groups`` zero-pads the axis to ``n_groups * group_size`` with
``n_groups = ceil(L / group_size)`` and splits it in place::

    x.shape                  = shape[:d] + (L,)                   + shape[d+1:]
    to_groups(x, d, g).shape = shape[:d] + (ceil(L / g), g)       + shape[d+1:]

so a ``(64, 40)`` weight grouped along ``d=1`` with ``g=32`` becomes ``(64, 2, 32)`` and its
per-group scale has shape ``(64, 2, 1)``. ``from_groups`` merges the two axes and drops the padding.
Both are pure tensor code (pad + view, flatten + narrow): no loops, no data-dependent branches, so
they trace under ``torch.compile(fullgraph=True)`` and carry autograd.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["to_groups", "from_groups", "grouped_shape", "group_count"]


def group_count(length: int, group_size: int) -> int:
    """Number of groups of ``group_size`` covering ``length`` elements: ``ceil(length / group_size)``."""
    return -(-length // group_size)


def grouped_shape(shape: Sequence[int], group_dim: int, group_size: int) -> torch.Size:
    """Shape of ``to_groups(x, group_dim, group_size)`` for ``x`` of ``shape``.

    Example:
        >>> grouped_shape((64, 40), 1, 32)
        torch.Size([64, 2, 32])
    """
    shape = tuple(shape)
    d = _normalize_dim(group_dim, len(shape), "group_dim")
    _check_group_size(group_size)
    return torch.Size(shape[:d] + (group_count(shape[d], group_size), group_size) + shape[d + 1:])


def to_groups(x: torch.Tensor, group_dim: int, group_size: int) -> torch.Tensor:
    """Zero-pad axis ``group_dim`` of ``x`` to a multiple of ``group_size`` and split it in place.

    Example:
        >>> to_groups(torch.arange(5.0).reshape(1, 5), 1, 4).tolist()
        [[[0.0, 1.0, 2.0, 3.0], [4.0, 0.0, 0.0, 0.0]]]
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    d = _normalize_dim(group_dim, x.dim(), "group_dim")
    _check_group_size(group_size)
    length = x.shape[d]
    pad = (-length) % group_size
    if pad:
        # F.pad lists (before, after) pairs starting from the last dim.
        x = F.pad(x, [0, 0] * (x.dim() - 1 - d) + [0, pad])
    return x.unflatten(d, (group_count(length, group_size), group_size))


def from_groups(grouped: torch.Tensor, group_dim: int, original_shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`to_groups`: merge axes ``group_dim, group_dim + 1`` and drop the padding.

    ``group_dim`` counts axes of the original (ungrouped) tensor. The result is a view of ``grouped``
    (not contiguous when padding was dropped).

    Example:
        >>> g = to_groups(torch.arange(5.0).reshape(1, 5), 1, 4)
        >>> from_groups(g, 1, (1, 5)).tolist()
        [[0.0, 1.0, 2.0, 3.0, 4.0]]
    """
    if not isinstance(grouped, torch.Tensor):
        raise TypeError(f"grouped must be a torch.Tensor, got {type(grouped).__name__}")
    original_shape = tuple(original_shape)
    d = _normalize_dim(group_dim, len(original_shape), "group_dim")
    if grouped.dim() != len(original_shape) + 1:
        raise ValueError(
            f"grouped has {grouped.dim()} dims; a grouped tensor of original_shape {original_shape} "
            f"must have {len(original_shape) + 1} (the group axis is split in two)"
        )
    padded = grouped.shape[d] * grouped.shape[d + 1]
    length = original_shape[d]
    if not length <= padded < length + grouped.shape[d + 1] and not (length == padded == 0):
        raise ValueError(
            f"grouped axis {d} holds {grouped.shape[d]} groups of {grouped.shape[d + 1]} = {padded} "
            f"elements, which is not the padded length of {length} (original_shape {original_shape})"
        )
    merged = grouped.flatten(d, d + 1)
    if merged.shape[d] == length:  # nothing was padded: a plain view, whose gradient is a view too
        return merged
    return merged.narrow(d, 0, length)


def _normalize_dim(dim: int, ndim: int, argument: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{argument} must be an int, got {dim!r}")
    if ndim == 0:
        raise ValueError(f"{argument}={dim}: a 0-d tensor (a scalar) has no dimension to group; give it a shape, e.g. x.reshape(1, -1)")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{argument}={dim} is out of range for a {ndim}-d tensor; allowed: {-ndim}..{ndim - 1}")
    return dim % ndim


def _check_group_size(group_size: int) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {group_size!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
