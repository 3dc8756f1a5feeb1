"""Bias quantization at the accumulator's scale: ``scale = input scale x weight scale``.

An integer kernel computes ``sum_k q_x[k] * q_w[o, k]`` in an accumulator whose unit is
``s_x * s_w[o]``; a bias added there must be an integer multiple of that unit::

    bias_hat[o] = clamp(round(bias[o] / (s_x * s_w[o])), min_int, max_int) * s_x * s_w[o]

The module is :class:`quantizers.BiasQuantizer`, built like every quantizer by
:func:`quantizers.build_tensor_quantizer` from a ``role="bias"`` class (``Int8Bias``,
``Int32Bias``). This needs a per-tensor input scale ``s_x`` (one accumulator unit per output channel) and a weight
scale per tensor or per output channel; groupwise scales have no single accumulator unit.
"""
from __future__ import annotations

from typing import Optional

from quantizers import BiasQuantizer, QuantTensor

__all__ = ["BiasQuantizer", "accumulator_scales"]


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
