"""Torch functions on QuantTensors: which keep the quantization, and which return plain tensors.

The rule: an op returns a QuantTensor only when its result is exactly representable with the same
element format and a scale / zero point derived from the input's by pure layout bookkeeping;
otherwise it returns the plain tensor ``op(value)``. Nothing raises where the same op on ``value``
would not. Decisions depend only on shapes, never on tensor data, so eager and
``torch.compile(fullgraph=True)`` agree (the one exception is ``torch.cat``, below).

Kept (QuantTensor out), on every kind, groupwise included:

- ``F.relu`` / ``torch.relu`` / ``.relu()``: ``value_`` clamped at 0, scale unchanged. Exact when 0
  is on the grid: always for float formats and for integers with an integral zero point (symmetric,
  or asymmetric in the ZP form); with a fractional MINVAL zero point the clamped zeros lie off the
  integer grid, as in Brevitas.
- ``F.dropout`` (and ``dropout1d/2d/3d``, ``alpha_dropout``, ``feature_alpha_dropout``) with
  ``training=False``: the input itself. With ``training=True``: plain.
- ``detach``, ``clone``, ``contiguous``, ``to(device)``, ``cpu``, ``cuda``: every field moved.
  ``to(dtype)`` / ``float()`` / ``half()`` / ``bfloat16()`` / ``double()`` cast every floating
  field, as Brevitas does, so ``value`` equals ``value.to(dtype)``; the elements and the grid are
  unchanged. A widening cast packs bit-exactly (the packed form records the dtype ``value_`` was
  rounded to); a narrowing cast also rounds ``value_`` and the scale, so ``pack()`` before it.
- ``transpose`` / ``permute`` / ``t`` / ``.T``: the scale is permuted the same way; for groupwise
  kinds the grouped axis pair moves and ``group_dim`` follows.
- ``view`` / ``reshape`` / ``flatten`` / ``unflatten`` / ``squeeze`` / ``unsqueeze``: kept when every
  run of merged or split dims is either constant in the scale (size 1 there) or fully covered by it
  (the scale is reshaped along); for groupwise kinds the grouped dim must also survive unchanged
  (e.g. ``(B, L, C) -> (B*L, C)`` grouped along C is kept, flattening C into its neighbours is
  plain). Per-tensor kinds are always kept. ``view`` never fails on strides (it reshapes).
- indexing ``qt[...]``: per-tensor kinds keep any index; per-channel and groupwise kinds keep basic
  indices (ints, slices, None, Ellipsis), the scale indexed along; for groupwise kinds the grouped
  dim must be taken whole (``:``). Advanced indexing of per-channel/groupwise kinds is plain.
- ``F.max_pool1d/2d/3d``: kept when the scale and zero point are constant over the pooled (last
  k) dims and, for groupwise kinds, the grouped dim is not pooled: the max of values on one grid is
  on that grid. Per-channel ``(1, C, 1, 1)`` activations are kept; per-position group scales are plain.
- ``torch.cat`` / ``concat`` / ``concatenate`` of QuantTensors of one kind and format: along a dim
  where the scales are full-size they are concatenated too; where they are constant (size 1) they
  must be equal: the same tensor object, or (eager only, since comparing data would break a
  compiled graph) equal values. So two per-tensor tensors with equal but distinct scale tensors
  concatenate to a QuantTensor in eager mode and to a plain tensor under ``torch.compile``.
  Groupwise kinds concatenate along the grouped dim only when every input but the last fills its
  last group (no padding in the middle). Mixed QuantTensor/plain inputs give a plain tensor.

Everything else (arithmetic dunders, comparisons, ``F.linear``, ``torch.stack``, reductions,
``.sum()`` and other tensor methods reached through attribute lookup) runs on ``value`` and returns
a plain tensor; QuantTensors anywhere in the arguments (nested lists/tuples/dicts included) are
dequantized.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import shape_ops  # noqa: F401  (registers view/reshape/permute/indexing/cat handlers)
from .base import PLAIN, QuantTensor, implements
from .grouping import to_groups
from .layout import align


# ---- helpers -------------------------------------------------------------------------------------
def _map_fields(qt: QuantTensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> QuantTensor:
    changes = {name: fn(a) for name, a in qt._aux().items() if a is not None}
    return qt.replace(value_=fn(qt.value_), **changes)


# ---- elementwise ---------------------------------------------------------------------------------
@implements(F.relu, torch.relu, torch.Tensor.relu)
def _relu(input, inplace=False):
    if not isinstance(input, QuantTensor):
        return PLAIN
    return input.replace(value_=torch.relu(input.value_))


def _dropout(training_default: bool) -> Callable:
    def handler(input, p=0.5, training=training_default, inplace=False):
        return input if isinstance(input, QuantTensor) and not training else PLAIN
    return handler


implements(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)(_dropout(True))
implements(F.alpha_dropout, F.feature_alpha_dropout)(_dropout(False))


def _max_pool(k: int) -> Callable:
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[k]

    def handler(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        if not isinstance(input, QuantTensor) or input.ndim not in (k + 1, k + 2):
            return PLAIN
        if input.is_groupwise and input.group_dim >= input.ndim - k:
            return PLAIN  # pooling inside the grouped dim mixes groups
        stored_ndim = input.value_.dim()
        for a in input._aux().values():
            if a is not None and a.numel() > 1 and any(s != 1 for s in align(a, stored_ndim).shape[-k:]):
                return PLAIN  # the scale varies over the pooled positions
        out = pool(input.value, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                   return_indices=return_indices)
        pooled, indices = out if return_indices else (out, None)
        if input.is_groupwise:
            result = input.replace(value_=to_groups(pooled, input.group_dim, input.group_size),
                                   original_shape=pooled.shape)
        else:
            result = input.replace(value_=pooled)
        return (result, indices) if return_indices else result
    return handler


def _max_pool_with_indices(k: int) -> Callable:
    pool = _max_pool(k)

    def handler(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        return pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    return handler


# F.max_poolNd reaches __torch_function__ as itself, or as F.max_poolNd_with_indices when called
# with return_indices=True.
for _k, _pool, _pool_with_indices in ((1, F.max_pool1d, F.max_pool1d_with_indices),
                                      (2, F.max_pool2d, F.max_pool2d_with_indices),
                                      (3, F.max_pool3d, F.max_pool3d_with_indices)):
    implements(_pool)(_max_pool(_k))
    implements(_pool_with_indices)(_max_pool_with_indices(_k))


@implements(torch.Tensor.detach, torch.detach)
def _detach(input):
    return _map_fields(input, torch.Tensor.detach) if isinstance(input, QuantTensor) else PLAIN


@implements(torch.Tensor.clone, torch.clone)
def _clone(input, *, memory_format=torch.preserve_format):
    if not isinstance(input, QuantTensor):
        return PLAIN
    changes = {name: a.clone() for name, a in input._aux().items() if a is not None}
    return input.replace(value_=input.value_.clone(memory_format=memory_format), **changes)


@implements(torch.Tensor.contiguous)
def _contiguous(input, memory_format=torch.contiguous_format):
    if not isinstance(input, QuantTensor) or (input.is_groupwise and memory_format != torch.contiguous_format):
        return PLAIN
    return input.replace(value_=input.value_.contiguous(memory_format=memory_format))


# ---- device and dtype ----------------------------------------------------------------------------
def _parse_to(args: tuple, kwargs: dict):
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    for a in args:
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, bool):
            kwargs["non_blocking"] = a
        elif isinstance(a, (str, int, torch.device)):
            device = a
        elif isinstance(a, (torch.Tensor, QuantTensor)):
            device, dtype = a.device, a.dtype
        else:
            return None
    return device, dtype, kwargs


@implements(torch.Tensor.to)
def _to(input, *args, **kwargs):
    parsed = _parse_to(args, dict(kwargs)) if isinstance(input, QuantTensor) else None
    if parsed is None:
        return PLAIN
    device, dtype, extra = parsed
    if dtype is not None and not dtype.is_floating_point:
        return PLAIN  # integer/bool casts leave the quantized world

    def move(t: torch.Tensor) -> torch.Tensor:
        target = {"device": device} if device is not None else {}
        if dtype is not None and t.is_floating_point():
            target["dtype"] = dtype
        return t.to(**target, **extra) if target or extra else t
    return _map_fields(input, move)


@implements(torch.Tensor.cpu)
def _cpu(input, memory_format=torch.preserve_format):
    return _to(input, "cpu")


@implements(torch.Tensor.cuda)
def _cuda(input, device=None, non_blocking=False, memory_format=torch.preserve_format):
    return _to(input, "cuda" if device is None else device, non_blocking=non_blocking)


for _method, _dtype in ((torch.Tensor.float, torch.float32), (torch.Tensor.double, torch.float64),
                        (torch.Tensor.half, torch.float16), (torch.Tensor.bfloat16, torch.bfloat16)):
    implements(_method)(lambda input, memory_format=torch.preserve_format, _dtype=_dtype: _to(input, _dtype))
