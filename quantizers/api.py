"""One-shot quantization of a tensor with a quantizer class."""
from __future__ import annotations

import functools
from typing import Any, Optional, Type

import torch
from torch import nn

from .tensor import QuantTensor
from .zoo.attributes import QuantizerAttributes
from .zoo.base import Quantizer, resolve_attributes
from .zoo.build import build_quantizer
from .zoo.errors import QuantizerConfigError
from .zoo.modes import Role

_DEFAULT_MOMENTUM = QuantizerAttributes.__dataclass_fields__["momentum"].default


def one_shot_attributes(quantizer: Type[Quantizer], ndim: int, **overrides: Any) -> QuantizerAttributes:
    """The validated attributes ``quantize`` uses for an ``ndim``-dimensional tensor: statistics
    from the tensor itself (no observer), weights per channel along dim 0 and grouped along dim 1,
    activations per channel along dim 1 and grouped along the last dim."""
    attributes = resolve_attributes(quantizer, **{"observer": None, "momentum": _DEFAULT_MOMENTUM, **overrides})
    if attributes.role is Role.BIAS:
        raise QuantizerConfigError(
            "a bias quantizer's scale is input scale x weight scale, which quantize() does not have; "
            "give the layer bias_quant=... (with an input quantizer), or call "
            "quantizers.build_tensor_quantizer(Q)(bias, input_scale, weight_scale)", "role", quantizer.__name__,
        )
    if attributes.role is Role.ACT:
        return attributes.with_layout(1 if ndim >= 2 else 0, -1)
    return attributes.with_layout(0, 1 if ndim >= 2 else 0)


@functools.lru_cache(maxsize=256)
def _cached_module(attributes: QuantizerAttributes) -> nn.Module:
    return build_quantizer(attributes)


def quantize(
    x: torch.Tensor, quantizer: Type[Quantizer], *, generator: Optional[torch.Generator] = None, **overrides: Any,
) -> QuantTensor:
    """Quantize ``x`` with ``quantizer`` (a class such as ``MXFloat4e2m1Weight``), computing the
    statistics from ``x`` itself, and return the QuantTensor.

    ``overrides`` set quantizer attributes (``bit_width=4``, ``group_size=64``,
    ``scale_rounding="rceil"``); unknown names raise ``TypeError``. Weights group along dim 1
    (input channels) and scale per channel along dim 0; activation quantizers group along the
    last dim. The runtime module is cached per resolved attribute values, so changing a class
    attribute takes effect at the next call. ``generator`` draws the noise of
    ``rounding="stochastic"`` (default: torch's global generator). Example::

        >>> import torch, quantizers as qz
        >>> qt = qz.quantize(torch.randn(64, 128), qz.MXFloat4e2m1Weight)
        >>> qt.value_.shape, qt.scale_.shape
        (torch.Size([64, 4, 32]), torch.Size([64, 4, 1]))
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    attributes = one_shot_attributes(quantizer, x.ndim, **overrides)
    try:
        module = _cached_module(attributes) if _hashable(attributes) else build_quantizer(attributes)
    except QuantizerConfigError as error:
        raise error.naming(quantizer.__name__) from error.__cause__
    return module(x) if generator is None else module(x, generator=generator)


def _hashable(attributes: QuantizerAttributes) -> bool:
    try:
        hash(attributes)
    except TypeError:  # a custom scaler instance without __hash__
        return False
    return True
