"""The runtime bias quantizer: biases at the accumulator's scale, ``scale = input scale x weight scale``.

An integer kernel computes ``sum_k q_x[k] * q_w[o, k]`` in an accumulator whose unit is
``s_x * s_w[o]``; a bias added there must be an integer multiple of that unit::

    bias_hat[o] = clamp(round(bias[o] / (s_x * s_w[o])), min_int, max_int) * s_x * s_w[o]

Layers compute ``s_x`` and ``s_w`` (``qlayers.bias.accumulator_scales``) and call this module.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .fake_quant import fake_quantize
from .formats import IntFormat
from .formats.carrier import compute_dtype
from .tensor import IntQuantTensor


class BiasQuantizer(nn.Module):
    """Quantizes a bias onto ``fmt`` with ``scale = input_scale * weight_scale`` (zero point 0).

    Built by :func:`quantizers.build_tensor_quantizer` from quantizers with ``role = "bias"``
    (:class:`quantizers.Int8Bias`, ``Int16Bias``, ``Int32Bias``).

    Args:
        fmt: integer element format (``IntFormat(32)`` for ``Int32Bias``).
        rounding: rounding mode (``None``: round half to even).
        name: the quantizer class's name, for messages.
    """

    requires_input_scale = True

    def __init__(self, fmt: IntFormat, rounding: Optional[str] = None, name: str = "BiasQuantizer") -> None:
        super().__init__()
        self.fmt = fmt
        self.rounding = rounding
        self.name = name

    def extra_repr(self) -> str:
        return f"{self.name}, fmt={self.fmt.name}, scale=input_scale*weight_scale"

    def forward(self, bias: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor) -> IntQuantTensor:
        """``bias`` quantized at ``input_scale * weight_scale`` (both already shaped like ``bias``
        or 0-d); gradients reach ``bias`` straight through the rounding."""
        scale = (input_scale * weight_scale).to(compute_dtype(bias.dtype))  # float32 for half biases
        value_ = fake_quantize(bias, scale, self.fmt, None, self.rounding)
        return IntQuantTensor(value_=value_, scale_=scale, fmt=self.fmt)
