"""QuantLinear: ``nn.Linear`` with quantized weight, bias, input and output."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from quantizers import Int8WeightPerTensorFloat

from .quant_args import QuantizerSpec
from .weight_layer import QuantWeightLayer


class QuantLinear(QuantWeightLayer, nn.Linear):
    """``y = output_quant(F.linear(input_quant(x), weight_quant(W), bias_quant(b)))``.

    The float parameters stay ``weight`` (out_features, in_features) and ``bias``; quantizers use
    the layout weight ``channel_axis=0`` (output features), ``group_dim=1`` (input features), and
    for activations the last dim for both. Quantizer overrides are prefixed keyword arguments.

    Example::

        >>> layer = QuantLinear(64, 32, weight_quant=Int4WeightPerGroupFloat, weight_group_size=32,
        ...                     input_quant=Int8ActPerTensorFloat, return_quant_tensor=False)
        >>> layer(torch.randn(8, 64)).shape
        torch.Size([8, 32])
    """

    float_class = nn.Linear
    weight_layout = {"channel_axis": 0, "group_dim": 1}
    act_layout = {"channel_axis": -1, "group_dim": -1}

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
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
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_weight_quantizers(weight_quant, bias_quant, input_quant, output_quant, return_quant_tensor, overrides)

    def quant_op(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, weight, bias)

    @classmethod
    def float_config(cls, module: nn.Linear) -> Dict[str, Any]:
        return dict(
            in_features=module.in_features, out_features=module.out_features, bias=module.bias is not None,
            device=module.weight.device, dtype=module.weight.dtype,
        )
