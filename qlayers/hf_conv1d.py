"""QuantConv1D: Hugging Face's GPT-2 ``Conv1D`` (a linear layer with a transposed weight), quantized.

``transformers.pytorch_utils.Conv1D(nf, nx)`` computes ``y = x @ W + b`` with ``W`` of shape
``(nx, nf)`` = (in features, out features). The twin keeps that parameter layout (same
``state_dict`` keys and shapes, tied parameters stay tied); its weight quantizer's layout is
``channel_axis=1`` (output features) and ``group_dim=0`` (input features), so per-channel and
per-group scales mean what they mean for ``QuantLinear``. ``transformers`` is imported only when
a ``Conv1D`` is met.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from quantizers import Int8WeightPerTensorFloat

from .quant_args import QuantizerSpec
from .weight_layer import QuantWeightLayer


def conv1d_class() -> Optional[type]:
    """``transformers.pytorch_utils.Conv1D`` when transformers is imported, else None."""
    import sys

    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


class QuantConv1D(QuantWeightLayer):
    """``y = output_quant(input_quant(x) @ weight_quant(W) + bias_quant(b))`` with ``W`` (nx, nf).

    Example::

        >>> from transformers.pytorch_utils import Conv1D
        >>> q = QuantConv1D.from_float(Conv1D(32, 16), weight_quant=Int8WeightPerChannelFloat)
        >>> q(torch.randn(2, 16)).shape
        torch.Size([2, 32])
    """

    weight_layout = {"channel_axis": 1, "group_dim": 0}
    act_layout = {"channel_axis": -1, "group_dim": -1}

    def __init__(
        self,
        nf: int,
        nx: int,
        *,
        weight_quant: QuantizerSpec = Int8WeightPerTensorFloat,
        bias_quant: QuantizerSpec = None,
        input_quant: QuantizerSpec = None,
        output_quant: QuantizerSpec = None,
        return_quant_tensor: bool = False,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **overrides: Any,
    ) -> None:
        nn.Module.__init__(self)
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.zeros(nx, nf, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(nf, device=device, dtype=dtype))
        self._init_weight_quantizers(weight_quant, bias_quant, input_quant, output_quant, return_quant_tensor, overrides)

    def quant_op(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, weight.t(), bias)

    @classmethod
    def from_float(cls, module: nn.Module, **quant_kwargs: Any) -> "QuantConv1D":
        """The quantized twin of a transformers ``Conv1D`` (see :meth:`QuantLayer.from_float`)."""
        if cls.float_class is None:
            cls.float_class = conv1d_class()  # known once transformers is imported
        return super().from_float(module, **quant_kwargs)

    @classmethod
    def float_config(cls, module: nn.Module) -> Dict[str, Any]:
        return dict(nf=module.nf, nx=module.nx, device=module.weight.device, dtype=module.weight.dtype)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, " + super().extra_repr()
