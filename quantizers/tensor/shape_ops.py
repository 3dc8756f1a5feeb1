"""Layout ops on QuantTensors: view/reshape/flatten/squeeze, transpose/permute, indexing and
concatenation. Which results stay QuantTensors is the rule stated in :mod:`quantizers.tensor.ops`;
the shape reasoning lives in :mod:`quantizers.tensor.layout`.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

from ..compile import is_tracing
from .base import AUX_FIELDS, PLAIN, QuantTensor, dequantize_args, implements
from .grouping import grouped_shape
from .layout import (
    align, basic_index, broadcast_index, dim_groups, flattened_shape, infer_shape, is_full_slice,
    normalize_dim, reshaped_broadcast_shape, squeezed_shape, unflattened_shape,
)


# ---- helpers -------------------------------------------------------------------------------------
def _is_per_tensor(qt: QuantTensor) -> bool:
    return not qt.is_groupwise and all(a is None or a.numel() == 1 for a in qt._aux().values())


def _fit_scalar(a: torch.Tensor, ndim: int) -> torch.Tensor:
    """A one-element aux tensor that still broadcasts to a result with ``ndim`` dims."""
    return a if a.dim() <= ndim else a.reshape(())


def _map_aux(qt: QuantTensor, ndim: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Apply ``fn`` to every aux field aligned to ``ndim`` dims; one-element fields stay as they are."""
    return {name: a if a.numel() == 1 else fn(align(a, ndim)) for name, a in qt._aux().items() if a is not None}


def _stored_dims(qt: QuantTensor, k: int) -> List[int]:
    """Dims of ``value_`` that hold original dim ``k`` (two for the grouped dim)."""
    if not qt.is_groupwise or k < qt.group_dim:
        return [k]
    return [k, k + 1] if k == qt.group_dim else [k + 1]


def _shape_args(shape: tuple) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        return tuple(shape[0])
    return tuple(shape)


# ---- reshapes ------------------------------------------------------------------------------------
def reshape(qt: QuantTensor, shape) -> object:
    """``qt`` reshaped to ``shape`` as a QuantTensor, or :data:`PLAIN` when the scale cannot follow."""
    new = infer_shape(shape, qt.numel())
    if new is None:
        return PLAIN
    old = tuple(qt.shape)
    if new == old:
        return qt
    if not qt.is_groupwise:
        return _reshape_stored(qt, old, new, {})
    d = qt.group_dim
    kept = [gn[0] for go, gn in dim_groups(old, new) or [] if go == [d] and len(gn) == 1 and new[gn[0]] == old[d]]
    if not kept:
        return PLAIN
    changes = {"group_dim": kept[0], "original_shape": torch.Size(new)}
    return _reshape_stored(qt, tuple(qt.value_.shape), tuple(grouped_shape(new, kept[0], qt.group_size)), changes)


def _reshape_stored(qt: QuantTensor, old: tuple, new: tuple, changes: dict) -> object:
    for name, a in qt._aux().items():
        if a is None:
            continue
        if a.numel() == 1:
            changes[name] = _fit_scalar(a, len(new))
            continue
        target = reshaped_broadcast_shape(tuple(align(a, len(old)).shape), old, new)
        if target is None:
            return PLAIN
        changes[name] = a.reshape(target)
    return qt.replace(value_=qt.value_.reshape(new), **changes)


@implements(torch.Tensor.view)
def _view(input, *shape, **kwargs):
    if not isinstance(input, QuantTensor) or "dtype" in kwargs:
        return PLAIN
    shape = _shape_args(tuple(kwargs["size"]) if "size" in kwargs else shape)
    if len(shape) == 1 and isinstance(shape[0], torch.dtype):
        return PLAIN
    result = reshape(input, shape)
    return input.value.reshape(shape) if result is PLAIN else result


@implements(torch.reshape, torch.Tensor.reshape)
def _reshape(input, *shape, **kwargs):
    if not isinstance(input, QuantTensor):
        return PLAIN
    return reshape(input, _shape_args(tuple(kwargs["shape"]) if "shape" in kwargs else shape))


@implements(torch.flatten, torch.Tensor.flatten)
def _flatten(input, start_dim=0, end_dim=-1):
    new = flattened_shape(tuple(input.shape), start_dim, end_dim) if isinstance(input, QuantTensor) else None
    return PLAIN if new is None else reshape(input, new)


@implements(torch.unflatten, torch.Tensor.unflatten)
def _unflatten(input, dim, sizes):
    new = unflattened_shape(tuple(input.shape), dim, sizes) if isinstance(input, QuantTensor) else None
    return PLAIN if new is None else reshape(input, new)


@implements(torch.squeeze, torch.Tensor.squeeze)
def _squeeze(input, dim=None):
    new = squeezed_shape(tuple(input.shape), dim) if isinstance(input, QuantTensor) else None
    return PLAIN if new is None else reshape(input, new)


@implements(torch.unsqueeze, torch.Tensor.unsqueeze)
def _unsqueeze(input, dim):
    d = normalize_dim(dim, input.ndim + 1) if isinstance(input, QuantTensor) else None
    if d is None:
        return PLAIN
    shape = tuple(input.shape)
    return reshape(input, shape[:d] + (1,) + shape[d:])


# ---- permutations --------------------------------------------------------------------------------
def permute(qt: QuantTensor, dims) -> object:
    """``qt`` with its dims permuted (always exact), or :data:`PLAIN` for an invalid ``dims``."""
    n = qt.ndim
    dims = [normalize_dim(d, n) for d in dims]
    if sorted(d for d in dims if d is not None) != list(range(n)) or len(dims) != n:
        return PLAIN
    stored = [s for k in dims for s in _stored_dims(qt, k)]
    changes = _map_aux(qt, len(stored), lambda a: a.permute(stored))
    if qt.is_groupwise:
        changes.update(group_dim=dims.index(qt.group_dim), original_shape=torch.Size(qt.shape[k] for k in dims))
    return qt.replace(value_=qt.value_.permute(stored), **changes)


@implements(torch.permute, torch.Tensor.permute)
def _permute(input, *dims, **kwargs):
    if not isinstance(input, QuantTensor):
        return PLAIN
    return permute(input, _shape_args(tuple(kwargs["dims"]) if "dims" in kwargs else dims))


@implements(torch.transpose, torch.Tensor.transpose, torch.swapaxes, torch.Tensor.swapaxes)
def _transpose(input, dim0, dim1):
    if not isinstance(input, QuantTensor):
        return PLAIN
    a, b = normalize_dim(dim0, input.ndim), normalize_dim(dim1, input.ndim)
    if a is None or b is None:
        return PLAIN
    dims = list(range(input.ndim))
    dims[a], dims[b] = b, a
    return permute(input, dims)


@implements(torch.t, torch.Tensor.t)
def _t(input):
    if not isinstance(input, QuantTensor) or input.ndim > 2:
        return PLAIN
    return input if input.ndim < 2 else permute(input, (1, 0))


# ---- indexing ------------------------------------------------------------------------------------
@implements(torch.Tensor.__getitem__)
def _getitem(input, index):
    if not isinstance(input, QuantTensor):
        return PLAIN
    index = dequantize_args(index)
    if _is_per_tensor(input):
        value_ = input.value_[index]
        scalars = {name: _fit_scalar(a, value_.dim()) for name, a in input._aux().items() if a is not None}
        return input.replace(value_=value_, **scalars)
    entries = basic_index(index, input.ndim)
    if entries is None:
        return PLAIN
    changes = {}
    if input.is_groupwise:
        entries, new_group_dim = _grouped_index(entries, input.group_dim)
        if entries is None:
            return PLAIN
    value_ = input.value_[tuple(entries)]
    stored_ndim = input.value_.dim()
    for name, a in input._aux().items():
        if a is not None:
            a = align(a, stored_ndim)
            changes[name] = _fit_scalar(a, value_.dim()) if a.numel() == 1 else a[broadcast_index(entries, a.shape)]
    if input.is_groupwise:
        d = new_group_dim
        changes.update(group_dim=d, original_shape=value_.shape[:d] + (input.shape[input.group_dim],) + value_.shape[d + 2:])
    return input.replace(value_=value_, **changes)


def _grouped_index(entries: list, group_dim: int):
    """Index entries over the original dims mapped onto the grouped layout, and the new group dim;
    ``(None, None)`` unless the grouped dim is taken whole."""
    stored, k, out_dims, new_group_dim = [], 0, 0, None
    for e in entries:
        if e is None:
            stored.append(None)
            out_dims += 1
            continue
        if k == group_dim:
            if not is_full_slice(e):
                return None, None
            stored.extend([slice(None), slice(None)])
            new_group_dim = out_dims
            out_dims += 1
        else:
            stored.append(e)
            out_dims += 0 if isinstance(e, int) else 1
        k += 1
    return stored, new_group_dim


# ---- concatenation -------------------------------------------------------------------------------
@implements(torch.cat, torch.concat)
def _cat(tensors, dim=0, *, out=None):
    return cat(tensors, dim) if out is None else PLAIN


@implements(torch.concatenate)
def _concatenate(tensors, axis=0, *, out=None):
    return cat(tensors, axis) if out is None else PLAIN


def cat(tensors, dim: int = 0) -> object:
    """Concatenation as a QuantTensor when the scales can follow (see the module rule), else PLAIN."""
    if not isinstance(tensors, (list, tuple)) or not tensors or not isinstance(tensors[0], QuantTensor):
        return PLAIN
    first = tensors[0]
    if not all(type(t) is type(first) and t.fmt == first.fmt and t.scale_format == first.scale_format
               and t.ndim == first.ndim for t in tensors):
        return PLAIN
    k = normalize_dim(dim, first.ndim)
    if k is None or first.ndim == 0:
        return PLAIN
    changes = {}
    stored_dim = k
    if first.is_groupwise:
        d = first.group_dim
        if not all(t.group_size == first.group_size and t.group_dim == d for t in tensors):
            return PLAIN
        if k == d and any(t.shape[d] % t.group_size for t in tensors[:-1]):
            return PLAIN  # padding would land in the middle of the result
        if k != d and any(t.shape[d] != first.shape[d] for t in tensors):
            return PLAIN
        stored_dim = k if k <= d else k + 1
        changes["original_shape"] = first.shape[:k] + (sum(t.shape[k] for t in tensors),) + first.shape[k + 1:]
    values = [t.value_ for t in tensors]
    for name in AUX_FIELDS:
        items = [t._aux()[name] for t in tensors]
        if all(a is None for a in items):
            continue
        if name == "zero_point_":  # symmetric inputs among asymmetric ones: their zeros take part
            items = [t.zero_point_ if a is None else a for t, a in zip(tensors, items)]
        merged = None if any(a is None for a in items) else _cat_aux(items, values, stored_dim)
        if merged is None:
            return PLAIN
        changes[name] = merged
    return first.replace(value_=torch.cat(values, stored_dim), **changes)


def _cat_aux(items: list, values: list, dim: int) -> Optional[torch.Tensor]:
    n = values[0].dim()
    aligned = [align(a, n) for a in items]
    others = [tuple(a.shape[:dim]) + tuple(a.shape[dim + 1:]) for a in aligned]
    if any(o != others[0] for o in others):
        return None
    if all(a.shape[dim] == 1 for a in aligned) and all(a.shape == items[0].shape for a in items):
        if all(a is items[0] for a in items):
            return items[0]
        if not is_tracing() and all(torch.equal(a, items[0]) for a in items[1:]):
            return items[0]
    if all(a.shape[dim] == v.shape[dim] for a, v in zip(aligned, values)):
        return torch.cat(aligned, dim)
    return None
