"""Bias quantization at the accumulator's scale: ``scale = input scale x weight scale``.

An integer kernel computes ``sum_k q_x[k] * q_w[o, k]`` in an accumulator whose unit is
``s_x * s_w[o]``; a bias added there must be an integer multiple of that unit::

    bias_hat[o] = clamp(round(bias[o] / (s_x * s_w[o])), min_int, max_int) * s_x * s_w[o]

This needs a per-tensor input scale ``s_x`` (one accumulator unit per output channel) and a weight
scale per tensor or per output channel; groupwise scales have no single accumulator unit.
"""
from __future__ import annotations

from typing import Optional, Type

import torch
from torch import nn

from quantizers import IntFormat, IntQuantTensor, Quantizer, QuantizerConfigError, QuantTensor, fake_quantize


class BiasQuantizer(nn.Module):
    """Quantizes a bias onto ``fmt`` with ``scale = input_scale * weight_scale`` (zero point 0).

    Built by layers from quantizers with ``requires_input_scale = True``
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

    @classmethod
    def from_quantizer(cls, quantizer: Type[Quantizer]) -> "BiasQuantizer":
        """The module for a bias quantizer class (``quant_type="int"``, ``bit_width``, ``signed``)."""
        if quantizer.quant_type != "int" or quantizer.element_format is not None:
            raise QuantizerConfigError(
                f"{quantizer.__name__}: a bias at input scale x weight scale needs integer elements "
                f"(quant_type='int' and bit_width), got quant_type={quantizer.quant_type!r}"
            )
        if quantizer.bit_width is None:
            raise QuantizerConfigError(f"{quantizer.__name__}: a bias quantizer needs bit_width (e.g. 32)")
        fmt = IntFormat(bits=quantizer.bit_width, signed=quantizer.signed, narrow=quantizer.narrow_range)
        return cls(fmt, quantizer.rounding, quantizer.__name__)

    def extra_repr(self) -> str:
        return f"{self.name}, fmt={self.fmt.name}, scale=input_scale*weight_scale"

    def forward(self, bias: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor) -> IntQuantTensor:
        """``bias`` quantized at ``input_scale * weight_scale`` (both already shaped like ``bias``
        or 0-d); gradients reach ``bias`` straight through the rounding."""
        scale = (input_scale * weight_scale).to(bias.dtype)
        value_ = fake_quantize(bias, scale, self.fmt, None, self.rounding)
        return IntQuantTensor(value_=value_, scale_=scale, fmt=self.fmt)


def accumulator_scales(
    layer: str, quant_input: Optional[QuantTensor], quant_weight: Optional[QuantTensor], out_channels: int,
    weight_channels_per_group: Optional[int] = None,
) -> tuple:
    """``(input_scale, weight_scale)`` shaped for a bias of ``out_channels`` values.

    ``weight_channels_per_group`` is set for transposed convolutions, whose per-channel weight
    scale has ``out_channels / groups`` entries shared by the groups. Raises ``ValueError``, naming
    ``layer`` and what to change, when the scales have no single accumulator unit per channel.
    """
    if quant_input is None:
        raise ValueError(
            f"{layer}: its bias quantizer uses scale = input scale x weight scale, but the input is "
            "not quantized; set input_quant (e.g. input_quant=Int8ActPerTensorFloat), feed a "
            "QuantTensor (return_quant_tensor=True on the previous layer), or use a bias quantizer "
            "with its own scale (e.g. bias_quant=Int8WeightPerTensorFloat)"
        )
    if quant_weight is None:
        raise ValueError(
            f"{layer}: its bias quantizer uses scale = input scale x weight scale, but weight_quant "
            "is None; set weight_quant or use a bias quantizer with its own scale"
        )
    if quant_input.is_groupwise or quant_input.scale.numel() != 1:
        kind = "groupwise" if quant_input.is_groupwise else f"per-token/per-channel (shape {tuple(quant_input.scale.shape)})"
        raise ValueError(
            f"{layer}: bias scale = input scale x weight scale needs a per-tensor input scale, but the "
            f"input is quantized {kind}; use a per-tensor input quantizer (e.g. "
            "Int8ActPerTensorFloat) or a bias quantizer with its own scale"
        )
    weight_scale = quant_weight.scale
    if quant_weight.is_groupwise:
        raise ValueError(
            f"{layer}: bias scale = input scale x weight scale needs a per-tensor or per-channel "
            f"weight scale, but the weight is quantized groupwise ({type(quant_weight).__name__}); "
            "use a per-tensor/per-channel weight quantizer or a bias quantizer with its own scale"
        )
    n = weight_scale.numel()
    if n == 1:
        weight_scale = weight_scale.reshape(())
    elif n == out_channels:
        weight_scale = weight_scale.reshape(out_channels)
    elif weight_channels_per_group is not None and n == weight_channels_per_group:
        weight_scale = weight_scale.reshape(n).repeat(out_channels // n)
    else:
        raise ValueError(
            f"{layer}: bias scale = input scale x weight scale needs one weight scale per output "
            f"channel ({out_channels}) or one in total, got {n} (scale shape "
            f"{tuple(quant_weight.scale.shape)}); quantize the weight per output channel"
        )
    return quant_input.scale.reshape(()), weight_scale
