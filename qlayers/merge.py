"""Layers that combine tensors: QuantEltwiseAdd and QuantCat.

Both quantize every operand with one shared ``input_quant`` (as Brevitas does): with a static
per-tensor quantizer in eval mode all operands then sit on the same grid, so the sum or the
concatenation is an integer operation. ``output_quant`` (default None) quantizes the result; only
then does ``return_quant_tensor=True`` return a QuantTensor.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from quantizers import Int8ActPerTensorFloat

from .quant_args import QuantizerSpec
from .quant_layer import MaybeQuant, QuantLayer, dequantize


class _QuantMerge(QuantLayer):
    quant_roles = ("input", "output")
    act_layout = {"channel_axis": 1, "group_dim": -1}

    def __init__(
        self,
        input_quant: QuantizerSpec = Int8ActPerTensorFloat,
        output_quant: QuantizerSpec = None,
        return_quant_tensor: bool = False,
        **overrides: Any,
    ) -> None:
        nn.Module.__init__(self)
        layouts = dict(input=self.act_layout, output=self.act_layout)
        self._init_quantizers(dict(input=input_quant, output=output_quant), overrides, layouts, return_quant_tensor)


class QuantEltwiseAdd(_QuantMerge):
    """``output_quant(input_quant(a) + input_quant(b))``.

    Example::

        >>> add = QuantEltwiseAdd()                 # Int8ActPerTensorFloat for both operands
        >>> add(torch.randn(2, 8), torch.randn(2, 8)).shape
        torch.Size([2, 8])
    """

    def forward(self, input: MaybeQuant, other: MaybeQuant) -> MaybeQuant:
        total = dequantize(self._quant_input(input)) + dequantize(self._quant_input(other))
        return self._quant_output(total, self.output_quant)


class QuantCat(_QuantMerge):
    """``output_quant(torch.cat([input_quant(t) for t in tensors], dim))``."""

    def forward(self, tensors: Sequence[MaybeQuant], dim: int = 0) -> MaybeQuant:
        joined = torch.cat([dequantize(self._quant_input(t)) for t in tensors], dim=dim)
        return self._quant_output(joined, self.output_quant)
