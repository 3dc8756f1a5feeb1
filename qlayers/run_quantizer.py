"""Calling a quantizer module from a layer."""
from __future__ import annotations

import torch
from torch import nn

from quantizers import QuantTensor


def run_quantizer(quantizer: nn.Module, x: torch.Tensor) -> QuantTensor:
    """``quantizer(x)``: every quantizer module is traceable by ``torch.compile(fullgraph=True)``
    (static quantizers read "calibrated" from their observer's buffer shapes, not values)."""
    return quantizer(x)
