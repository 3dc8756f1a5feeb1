"""QuantConv1d/2d/3d and QuantConvTranspose1d/2d/3d: ``nn.Conv*`` / ``nn.ConvTranspose*`` with
quantized weight, bias, input and output; same arguments, same ``F.conv*`` calls."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from quantizers import Int8WeightPerTensorFloat

from .quant_args import QuantizerSpec
from .weight_layer import QuantWeightLayer

_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_CONV_TRANSPOSE_ARGS = _CONV_ARGS + ("output_padding",)


def _float_config(module: nn.Module, names: tuple) -> Dict[str, Any]:
    config = {name: getattr(module, name) for name in names}
    return dict(config, bias=module.bias is not None, device=module.weight.device, dtype=module.weight.dtype)


class QuantConvNd(QuantWeightLayer):
    """Shared constructor of the quantized convolutions (``float_class`` picks the dimension).

    Weight ``(out, in / groups, *kernel)``: ``channel_axis=0``, ``group_dim=1`` (input channels at
    each kernel position); activations ``(N, C, ...)``: ``channel_axis=1``, ``group_dim=1``.
    """

    weight_layout = {"channel_axis": 0, "group_dim": 1}
    act_layout = {"channel_axis": 1, "group_dim": 1}

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
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
        self.float_class.__init__(
            self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype,
        )
        self._init_weight_quantizers(weight_quant, bias_quant, input_quant, output_quant, return_quant_tensor, overrides)

    def quant_op(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return self._conv_forward(x, weight, bias)

    @classmethod
    def float_config(cls, module: nn.Module) -> Dict[str, Any]:
        return _float_config(module, _CONV_ARGS)


class QuantConv1d(QuantConvNd, nn.Conv1d):
    """``nn.Conv1d`` with quantizers; see :class:`QuantConvNd` and :class:`~qlayers.QuantLinear`."""

    float_class = nn.Conv1d


class QuantConv2d(QuantConvNd, nn.Conv2d):
    """``nn.Conv2d`` with quantizers; see :class:`QuantConvNd` and :class:`~qlayers.QuantLinear`.

    Example::

        >>> conv = QuantConv2d(32, 64, 3, weight_quant=MXFloat8e4m3Weight, input_quant=MXFloat8e4m3Act)
        >>> conv(torch.randn(1, 32, 8, 8)).shape
        torch.Size([1, 64, 6, 6])
    """

    float_class = nn.Conv2d


class QuantConv3d(QuantConvNd, nn.Conv3d):
    """``nn.Conv3d`` with quantizers; see :class:`QuantConvNd` and :class:`~qlayers.QuantLinear`."""

    float_class = nn.Conv3d


class QuantConvTransposeNd(QuantWeightLayer):
    """Shared constructor of the quantized transposed convolutions.

    Weight ``(in, out / groups, *kernel)``: ``channel_axis=1``, ``group_dim=0`` (the reduction
    axis); activations ``(N, C, ...)``: ``channel_axis=1``, ``group_dim=1``. ``forward(x,
    output_size=None)`` as in ``nn.ConvTranspose*``.
    """

    weight_layout = {"channel_axis": 1, "group_dim": 0}
    act_layout = {"channel_axis": 1, "group_dim": 1}
    spatial_dims: int = 0
    _conv_transpose = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Any = 1,
        padding_mode: str = "zeros",
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
        self.float_class.__init__(
            self, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            output_padding=output_padding, groups=groups, bias=bias, dilation=dilation,
            padding_mode=padding_mode, device=device, dtype=dtype,
        )
        self._init_weight_quantizers(weight_quant, bias_quant, input_quant, output_quant, return_quant_tensor, overrides)

    def bias_channels(self) -> Dict[str, int]:
        # A per-channel weight scale runs along out / groups, shared by the groups.
        return {"out_channels": self.out_channels, "weight_channels_per_group": self.out_channels // self.groups}

    def quant_op(
        self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], output_size: Optional[List[int]] = None
    ) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, self.spatial_dims, self.dilation
        )
        return self._conv_transpose(x, weight, bias, self.stride, self.padding, output_padding, self.groups, self.dilation)

    @classmethod
    def float_config(cls, module: nn.Module) -> Dict[str, Any]:
        return _float_config(module, _CONV_TRANSPOSE_ARGS)


class QuantConvTranspose1d(QuantConvTransposeNd, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` with quantizers; see :class:`QuantConvTransposeNd`."""

    float_class = nn.ConvTranspose1d
    spatial_dims = 1
    _conv_transpose = staticmethod(F.conv_transpose1d)


class QuantConvTranspose2d(QuantConvTransposeNd, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with quantizers; see :class:`QuantConvTransposeNd`."""

    float_class = nn.ConvTranspose2d
    spatial_dims = 2
    _conv_transpose = staticmethod(F.conv_transpose2d)


class QuantConvTranspose3d(QuantConvTransposeNd, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with quantizers; see :class:`QuantConvTransposeNd`."""

    float_class = nn.ConvTranspose3d
    spatial_dims = 3
    _conv_transpose = staticmethod(F.conv_transpose3d)
