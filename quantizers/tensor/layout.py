"""Shape bookkeeping for layout ops on QuantTensors: which reshapes, index expressions and
concatenations a broadcast scale can follow exactly. Pure Python on shapes (no tensor data), so the
decisions are static under ``torch.compile``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

Shape = Tuple[int, ...]
DimGroup = Tuple[List[int], List[int]]


def align(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``t`` with leading size-1 dims added up to ``ndim`` dims (same broadcasting meaning)."""
    missing = ndim - t.dim()
    return t.reshape((1,) * missing + tuple(t.shape)) if missing > 0 else t


def normalize_dim(dim: int, ndim: int) -> Optional[int]:
    """``dim`` in ``0..ndim-1``, or None when it is not a valid dim (the caller falls back)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not -max(ndim, 1) <= dim < max(ndim, 1):
        return None
    return dim % max(ndim, 1)


def infer_shape(shape: Sequence[int], numel: int) -> Optional[Shape]:
    """Resolve one ``-1`` in ``shape``; None when ``shape`` cannot hold ``numel`` elements."""
    shape = tuple(shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        return None
    if shape.count(-1) > 1 or any(s < -1 for s in shape):
        return None
    known = 1
    for s in shape:
        if s != -1:
            known *= s
    if -1 in shape:
        if known == 0 or numel % known:
            return None
        shape = tuple(numel // known if s == -1 else s for s in shape)
        known = numel
    return shape if known == numel else None


def dim_groups(old: Sequence[int], new: Sequence[int]) -> Optional[List[DimGroup]]:
    """Match the non-1 dims of ``old`` and ``new`` into minimal runs with equal products.

    ``(6, 4) -> (2, 3, 4)`` gives ``[([0], [0, 1]), ([1], [2])]``: each run of old dims is
    reshaped into the matching run of new dims. Size-1 dims belong to no run. None for empty shapes.
    """
    if 0 in old or 0 in new:
        return None
    old_dims = [i for i, s in enumerate(old) if s != 1]
    new_dims = [j for j, s in enumerate(new) if s != 1]
    groups: List[DimGroup] = []
    i = j = 0
    while i < len(old_dims) and j < len(new_dims):
        group_old, group_new = [old_dims[i]], [new_dims[j]]
        p_old, p_new = old[old_dims[i]], new[new_dims[j]]
        i, j = i + 1, j + 1
        while p_old != p_new:
            if p_old < p_new and i < len(old_dims):
                group_old.append(old_dims[i])
                p_old *= old[old_dims[i]]
                i += 1
            elif p_new < p_old and j < len(new_dims):
                group_new.append(new_dims[j])
                p_new *= new[new_dims[j]]
                j += 1
            else:
                return None
        groups.append((group_old, group_new))
    return groups if i == len(old_dims) and j == len(new_dims) else None


def reshaped_broadcast_shape(aux_shape: Sequence[int], old: Sequence[int], new: Sequence[int]) -> Optional[Shape]:
    """Shape a broadcast tensor (``aux_shape``, aligned to ``old``) takes when its target is reshaped
    from ``old`` to ``new``, or None when no broadcast shape describes it.

    Each run of :func:`dim_groups` must be either all size 1 in ``aux_shape`` (constant over the
    run: size 1 after the reshape too) or all full (the aux tensor is reshaped with the data).
    """
    groups = dim_groups(old, new)
    if groups is None:
        return None
    result = [1] * len(new)
    for group_old, group_new in groups:
        if all(aux_shape[k] == 1 for k in group_old):
            continue
        if not all(aux_shape[k] == old[k] for k in group_old):
            return None
        for j in group_new:
            result[j] = new[j]
    return tuple(result)


def basic_index(index, ndim: int) -> Optional[list]:
    """``index`` as a list of ints, slices and Nones covering all ``ndim`` dims (Ellipsis
    expanded), or None for anything else (tensors, bools, lists: advanced indexing)."""
    entries = index if isinstance(index, tuple) else (index,)
    for e in entries:
        if not (e is None or e is Ellipsis or isinstance(e, slice) or (isinstance(e, int) and not isinstance(e, bool))):
            return None
    consuming = sum(1 for e in entries if e is not None and e is not Ellipsis)
    if consuming > ndim or sum(1 for e in entries if e is Ellipsis) > 1:
        return None
    expanded = []
    for e in entries:
        if e is Ellipsis:
            expanded.extend([slice(None)] * (ndim - consuming))
        else:
            expanded.append(e)
    if Ellipsis not in entries:
        expanded.extend([slice(None)] * (ndim - consuming))
    return expanded


def broadcast_index(entries: list, aux_shape: Sequence[int]) -> tuple:
    """The index to apply to a broadcast tensor (aligned) so it follows ``entries`` applied to its
    target: dims where it has size 1 keep size 1 (``0`` for an int, ``:`` for a slice)."""
    out, k = [], 0
    for e in entries:
        if e is None:
            out.append(None)
            continue
        if aux_shape[k] == 1:
            out.append(0 if isinstance(e, int) else slice(None))
        else:
            out.append(e)
        k += 1
    return tuple(out)


def is_full_slice(e) -> bool:
    return isinstance(e, slice) and e.start is None and e.stop is None and e.step is None


def squeezed_shape(shape: Sequence[int], dim=None) -> Optional[Shape]:
    """``shape`` without the size-1 dims named by ``dim`` (None: all of them)."""
    ndim = len(shape)
    if dim is None:
        dims = range(ndim)
    else:
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        dims = [normalize_dim(d, ndim) for d in dims]
        if any(d is None for d in dims):
            return None
    drop = {d for d in dims if ndim and shape[d] == 1}
    return tuple(s for i, s in enumerate(shape) if i not in drop)


def flattened_shape(shape: Sequence[int], start_dim: int = 0, end_dim: int = -1) -> Optional[Shape]:
    if len(shape) == 0:
        return (1,)
    start, end = normalize_dim(start_dim, len(shape)), normalize_dim(end_dim, len(shape))
    if start is None or end is None or start > end:
        return None
    merged = 1
    for s in shape[start:end + 1]:
        merged *= s
    return tuple(shape[:start]) + (merged,) + tuple(shape[end + 1:])


def unflattened_shape(shape: Sequence[int], dim: int, sizes: Sequence[int]) -> Optional[Shape]:
    d = normalize_dim(dim, len(shape))
    sizes = infer_shape(sizes, shape[d]) if d is not None else None
    if sizes is None:
        return None
    return tuple(shape[:d]) + sizes + tuple(shape[d + 1:])
