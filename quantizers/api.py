"""One-shot quantization of a tensor with a quantizer class."""
from __future__ import annotations

import functools
from typing import Any, Dict, Tuple, Type

import torch

from .tensor import QuantTensor
from .tensor_quantizer import TensorQuantizer
from .zoo.base import Quantizer
from .zoo.build import build_tensor_quantizer


def _one_shot_module(quantizer: Type[Quantizer], overrides: Dict[str, Any], ndim: int) -> TensorQuantizer:
    # One-shot use computes every statistic from the tensor itself: no observer state to share.
    layout = {"channel_axis": 0, "group_dim": 1 if ndim >= 2 else 0}
    if overrides.get("role", quantizer.role) == "act":
        layout = {"channel_axis": 1 if ndim >= 2 else 0, "group_dim": -1}
    return build_tensor_quantizer(quantizer, layout, **{"observer": None, **overrides})


@functools.lru_cache(maxsize=256)
def _cached_module(quantizer: Type[Quantizer], overrides: Tuple[Tuple[str, Any], ...], ndim: int) -> TensorQuantizer:
    return _one_shot_module(quantizer, dict(overrides), ndim)


def quantize(x: torch.Tensor, quantizer: Type[Quantizer], **overrides: Any) -> QuantTensor:
    """Quantize ``x`` with ``quantizer`` (a class such as ``MXFloat4e2m1Weight``), computing the
    statistics from ``x`` itself, and return the QuantTensor.

    ``overrides`` set quantizer attributes (``bit_width=4``, ``group_size=64``,
    ``scale_rounding="rceil"``); unknown names raise ``TypeError``. Weights group along dim 1
    (input channels) and scale per channel along dim 0; activation quantizers group along the
    last dim. Example::

        >>> import torch, quantizers as qz
        >>> qt = qz.quantize(torch.randn(64, 128), qz.MXFloat4e2m1Weight)
        >>> qt.value_.shape, qt.scale_.shape
        (torch.Size([64, 4, 32]), torch.Size([64, 4, 1]))
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    try:
        key = tuple(sorted(overrides.items()))
        hash(key)
    except TypeError:
        return _one_shot_module(quantizer, overrides, x.ndim)(x)
    return _cached_module(quantizer, key, x.ndim)(x)
