"""Folding an RMSNorm's scale into the linears that read its output (float-function preserving).

``RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g`` feeds ``y = RMSNorm(x) @ W.T``; with ``W' = W * g``
(column ``j`` of ``W`` times ``g[j]``) and ``g' = 1``, ``y`` is unchanged. After folding, the norm
is scale-free, ``x / rms(x)``, which commutes with any orthogonal ``Q`` (``rms(x @ Q) = rms(x)``):
the precondition of the residual-stream rotation (:mod:`qlayers.transforms.rotation`).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def is_rms_norm(module: nn.Module) -> bool:
    """Whether ``module`` is an RMSNorm with a per-channel scale ``weight`` and no bias (torch's
    ``nn.RMSNorm`` or a Hugging Face ``*RMSNorm`` computing ``x / rms(x) * weight``)."""
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    return (name.endswith("RMSNorm") and isinstance(weight, torch.Tensor) and weight.dim() == 1
            and getattr(module, "bias", None) is None)


@torch.no_grad()
def fold_rms_norm(norm: nn.Module, linears: Iterable[nn.Linear]) -> None:
    """``W <- W * g`` for every linear (in float64, stored in its dtype), then ``g <- 1``.

    The linears must all read ``norm``'s output (their ``in_features`` equal ``g``'s size); a linear
    whose weight is shared (tied) with another module must be untied by the caller first.
    """
    g = norm.weight.detach().to(torch.float64)
    for linear in linears:
        if linear.in_features != g.numel():
            raise ValueError(f"fold_rms_norm: {type(linear).__name__} in_features={linear.in_features} "
                             f"does not match the norm's {g.numel()} channels")
        linear.weight.copy_(linear.weight.to(torch.float64) * g)
    norm.weight.fill_(1.0)
