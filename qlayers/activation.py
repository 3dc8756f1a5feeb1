"""Quantized activations: apply the float activation, then quantize (``act_quant``).

``QuantIdentity``, ``QuantReLU``, ``QuantSigmoid``, ``QuantTanh`` and ``QuantHardTanh`` subclass
their ``nn`` twins. Each takes ``act_quant`` (the output quantizer), an optional ``input_quant``
applied before the activation, ``return_quant_tensor`` and prefixed overrides (``act_bit_width=4``).
Activations have no fixed layout, so quantizers default to ``channel_axis=1`` (``(N, C, ...)``)
and ``group_dim=-1``; set ``act_channel_axis`` / ``act_group_dim`` for other layouts.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from quantizers import Int8ActPerTensorFloat, Uint8ActPerTensorFloat

from .quant_args import QuantizerSpec
from .quant_layer import MaybeQuant, QuantLayer


class QuantActivation(QuantLayer):
    """Base: ``act_quant(activation(input_quant(x)))``. Without ``act_quant``, a QuantTensor that
    the activation keeps quantized (identity, ReLU) is returned as such when
    ``return_quant_tensor=True``."""

    quant_roles = ("act", "input")
    act_layout = {"channel_axis": 1, "group_dim": -1}

    def _init_act_quantizers(
        self, act_quant: QuantizerSpec, input_quant: QuantizerSpec, return_quant_tensor: bool, overrides: Dict[str, Any]
    ) -> None:
        layouts = dict(act=self.act_layout, input=self.act_layout)
        self._init_quantizers(dict(act=act_quant, input=input_quant), overrides, layouts, return_quant_tensor)

    def activation(self, x: MaybeQuant) -> MaybeQuant:
        """The float activation (QuantTensor in: the ops of :mod:`quantizers.tensor.ops` decide)."""
        return x

    def forward(self, input: MaybeQuant) -> MaybeQuant:
        return self._quant_output(self.activation(self._quant_input(input)), self.act_quant)


class QuantIdentity(QuantActivation, nn.Identity):
    """Quantizes its input: ``act_quant(x)`` (Brevitas's ``QuantIdentity``).

    Example::

        >>> q = QuantIdentity(return_quant_tensor=True)      # Int8ActPerTensorFloat
        >>> type(q(torch.randn(4, 8))).__name__
        'IntQuantTensor'
    """

    float_class = nn.Identity

    def __init__(
        self,
        act_quant: QuantizerSpec = Int8ActPerTensorFloat,
        *,
        input_quant: QuantizerSpec = None,
        return_quant_tensor: bool = False,
        **overrides: Any,
    ) -> None:
        nn.Identity.__init__(self)
        self._init_act_quantizers(act_quant, input_quant, return_quant_tensor, overrides)


class QuantReLU(QuantActivation, nn.ReLU):
    """``act_quant(relu(x))``; the default ``Uint8ActPerTensorFloat`` spends all 8 bits on x >= 0."""

    float_class = nn.ReLU

    def __init__(
        self,
        act_quant: QuantizerSpec = Uint8ActPerTensorFloat,
        *,
        input_quant: QuantizerSpec = None,
        return_quant_tensor: bool = False,
        inplace: bool = False,
        **overrides: Any,
    ) -> None:
        nn.ReLU.__init__(self, inplace)
        self._init_act_quantizers(act_quant, input_quant, return_quant_tensor, overrides)

    def activation(self, x: MaybeQuant) -> MaybeQuant:
        return F.relu(x, inplace=self.inplace)

    @classmethod
    def float_config(cls, module: nn.ReLU) -> Dict[str, Any]:
        return {"inplace": module.inplace}


class QuantSigmoid(QuantActivation, nn.Sigmoid):
    """``act_quant(sigmoid(x))`` with an unsigned default (outputs lie in (0, 1))."""

    float_class = nn.Sigmoid

    def __init__(
        self,
        act_quant: QuantizerSpec = Uint8ActPerTensorFloat,
        *,
        input_quant: QuantizerSpec = None,
        return_quant_tensor: bool = False,
        **overrides: Any,
    ) -> None:
        nn.Sigmoid.__init__(self)
        self._init_act_quantizers(act_quant, input_quant, return_quant_tensor, overrides)

    def activation(self, x: MaybeQuant) -> MaybeQuant:
        return torch.sigmoid(x)


class QuantTanh(QuantActivation, nn.Tanh):
    """``act_quant(tanh(x))``; outputs lie in (-1, 1), so the default is the signed
    ``Int8ActPerTensorFloat``."""

    float_class = nn.Tanh

    def __init__(
        self,
        act_quant: QuantizerSpec = Int8ActPerTensorFloat,
        *,
        input_quant: QuantizerSpec = None,
        return_quant_tensor: bool = False,
        **overrides: Any,
    ) -> None:
        nn.Tanh.__init__(self)
        self._init_act_quantizers(act_quant, input_quant, return_quant_tensor, overrides)

    def activation(self, x: MaybeQuant) -> MaybeQuant:
        return torch.tanh(x)


class QuantHardTanh(QuantActivation, nn.Hardtanh):
    """``act_quant(hardtanh(x, min_val, max_val))``."""

    float_class = nn.Hardtanh

    def __init__(
        self,
        min_val: float = -1.0,
        max_val: float = 1.0,
        *,
        act_quant: QuantizerSpec = Int8ActPerTensorFloat,
        input_quant: QuantizerSpec = None,
        return_quant_tensor: bool = False,
        inplace: bool = False,
        **overrides: Any,
    ) -> None:
        nn.Hardtanh.__init__(self, min_val, max_val, inplace)
        self._init_act_quantizers(act_quant, input_quant, return_quant_tensor, overrides)

    def activation(self, x: MaybeQuant) -> MaybeQuant:
        return F.hardtanh(x, self.min_val, self.max_val, self.inplace)

    @classmethod
    def float_config(cls, module: nn.Hardtanh) -> Dict[str, Any]:
        return {"min_val": module.min_val, "max_val": module.max_val, "inplace": module.inplace}
