"""Float-function-preserving weight edits: per-channel scales moved between a producer and its
consumers, and BatchNorm folded into the preceding Linear/Conv.

A per-input-channel scale ``s`` of a consumer layer (SmoothQuant, AWQ, equalization) multiplies
its weight's input channels, ``W[:, j] <- W[:, j] * s_j``, and divides its input, ``x_j <- x_j / s_j``.
The division goes into the producer of ``x`` (:func:`scale_output_channels`) when it has a per-
output-channel affine part:

- ``LayerNorm`` / RMSNorm-like norms (a 1-D ``weight``, optional ``bias``): ``weight_j / s_j``, ``bias_j / s_j``;
- ``Linear`` / ``Conv`` (``groups`` any): output rows of ``weight`` and ``bias`` divided by ``s``;
- ``BatchNorm`` (affine): ``weight_j / s_j``, ``bias_j / s_j``.

Otherwise the layer keeps ``1 / s`` as its ``input_multiplier``
(:meth:`qlayers.QuantLayer.set_input_multiplier`). Either way ``op(x / s, W * s) = op(x, W)``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

_NORMS = (nn.LayerNorm, nn.RMSNorm)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and look-alikes (HF's ``LlamaRMSNorm``, ``T5LayerNorm``): a class named
    ``*Norm`` with a 1-D ``weight`` that scales the last dimension (GroupNorm and BatchNorm are
    not: their channels are on dim 1)."""
    if isinstance(module, (nn.GroupNorm,) + _BATCHNORMS):
        return False
    weight = getattr(module, "weight", None)
    named = isinstance(module, _NORMS) or type(module).__name__.endswith("Norm")
    return named and isinstance(weight, torch.Tensor) and weight.dim() == 1


def output_channel_params(module: nn.Module) -> Optional[List[Tuple[torch.Tensor, int]]]:
    """``[(parameter, axis), ...]`` that scale ``module``'s output channels, or None when the
    module cannot absorb a per-output-channel scale."""
    if is_norm(module) or (isinstance(module, _BATCHNORMS) and module.affine):
        params = [(module.weight, 0)]
    elif isinstance(module, (nn.Linear,) + _CONVS):
        params = [(module.weight, 0)]
    else:
        return None
    bias = getattr(module, "bias", None)
    return params + ([(bias, 0)] if isinstance(bias, torch.Tensor) else [])


def output_channels(module: nn.Module) -> int:
    return output_channel_params(module)[0][0].shape[0]


def output_channel_axis(module: nn.Module) -> int:
    """The dimension of the module's output that holds its channels (-1 or 1), for a 2-D+ output."""
    return 1 if isinstance(module, _CONVS + _BATCHNORMS) else -1


def input_channels(layer: nn.Module) -> int:
    """Input channels of a Linear/Conv consumer (``in_features`` / ``in_channels``)."""
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def input_channel_axis(layer: nn.Module) -> int:
    return -1 if isinstance(layer, nn.Linear) else 1


def is_consumer(layer: nn.Module) -> bool:
    """Whether ``layer`` can take a per-input-channel scale: a Linear, or a Conv with ``groups=1``
    (every output sees every input channel)."""
    return isinstance(layer, nn.Linear) or (isinstance(layer, _CONVS) and layer.groups == 1)


def check_consumer(layer: nn.Module, name: str) -> None:
    """:func:`is_consumer`, or ``ValueError`` naming the layer."""
    if is_consumer(layer):
        return
    kind = f"{type(layer).__name__}(groups={layer.groups})" if isinstance(layer, _CONVS) else type(layer).__name__
    raise ValueError(f"layer {name!r} ({kind}) cannot take a per-input-channel scale; allowed: Linear, Conv with groups=1")


@torch.no_grad()
def scale_output_channels(module: nn.Module, s: torch.Tensor) -> None:
    """Divide ``module``'s output channel ``j`` by ``s_j`` (its weight rows and bias)."""
    for param, axis in output_channel_params(module):
        shape = [1] * param.dim()
        shape[axis] = -1
        param.div_(s.to(param).reshape(shape))


@torch.no_grad()
def scale_input_channels(layer: nn.Module, s: torch.Tensor) -> None:
    """Multiply ``layer``'s weight input channel ``j`` by ``s_j`` (``W[:, j] * s_j``)."""
    weight = layer.weight
    shape = [1] * weight.dim()
    shape[1] = -1
    weight.mul_(s.to(weight).reshape(shape))


def fold_scale(producer: Optional[nn.Module], consumers: Sequence[nn.Module], s: torch.Tensor) -> None:
    """Move ``1 / s`` of the consumers' common input into ``producer`` (or, without one, into each
    consumer's ``input_multiplier``) and ``s`` into their weights: the float function is unchanged."""
    for layer in consumers:
        scale_input_channels(layer, s)
    if producer is not None:
        scale_output_channels(producer, s)
        return
    for layer in consumers:
        old = layer._buffers.get("input_multiplier")
        layer.set_input_multiplier((1.0 / s if old is None else old / s.to(old)).to(layer.weight.dtype))


@torch.no_grad()
def fold_batchnorm_into(layer: nn.Module, bn: nn.Module) -> None:
    """``layer`` (Linear/Conv) followed by ``bn`` (in eval) becomes ``layer`` alone:
    ``W' = W * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)`` per output
    channel; a layer without a bias gets one."""
    g = bn.running_var.add(bn.eps).rsqrt()
    if bn.affine:
        g = g * bn.weight
    shift = -bn.running_mean * g + (bn.bias if bn.affine else 0.0)
    weight = layer.weight
    weight.mul_(g.to(weight).reshape([-1] + [1] * (weight.dim() - 1)))
    if layer.bias is None:
        layer.bias = nn.Parameter(shift.to(weight).clone())
    else:
        layer.bias.mul_(g.to(weight)).add_(shift.to(weight))
