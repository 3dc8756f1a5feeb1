"""What every quantized layer shares: owning its quantizers, quantizing inputs and outputs, and
being built from its float twin.

A layer names its quantizers by role (``weight``, ``bias``, ``input``, ``output``, ``act``); each
is a submodule ``<role>_quant`` (``None`` when disabled), so ``layer.input_quant(x)`` quantizes a
tensor the way the layer does and observer statistics appear in ``state_dict`` under
``<role>_quant.observer.*``.

Inputs may be float tensors or QuantTensors. A layer may carry an ``input_multiplier`` (a buffer of
one factor per input channel, set by :meth:`QuantLayer.set_input_multiplier`, e.g. by SmoothQuant or
AWQ when no preceding op can absorb their scales): the input becomes ``x * m`` (broadcast along the
layer's input channel axis) before anything else, quantized or not, and ``m`` is saved in
``state_dict``. With an ``input_quant`` the input's (dequantized) value is quantized; without one a QuantTensor input is used as it is (its ``value``, and its scale
where a bias needs it). ``return_quant_tensor=True`` returns a QuantTensor whenever the output is
quantized (any kind: int, float, groupwise); otherwise, and always when nothing quantizes the
output, the layer returns a plain tensor.
"""
from __future__ import annotations

import inspect
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Type, Union

import torch
from torch import nn

from quantizers import QuantTensor

from .quant_args import Layout, QuantizerSpec, make_quantizer, split_overrides

MaybeQuant = Union[torch.Tensor, QuantTensor]


def dequantize(x: MaybeQuant) -> torch.Tensor:
    """``x.value`` for a QuantTensor, ``x`` itself for a plain tensor."""
    return x.value if isinstance(x, QuantTensor) else x


class QuantLayer(nn.Module):
    """Base of the quantized layers; subclasses list their quantizer roles and layouts.

    Class attributes:
        quant_roles: the quantizer roles, in the order of the constructor's arguments.
        float_class: the ``nn`` module this layer quantizes (for :meth:`from_float`), or None.
    """

    quant_roles: ClassVar[Tuple[str, ...]] = ()
    float_class: ClassVar[Optional[Type[nn.Module]]] = None

    def _init_quantizers(
        self,
        specs: Mapping[str, QuantizerSpec],
        overrides: Mapping[str, Any],
        layouts: Mapping[str, Optional[Layout]],
        return_quant_tensor: bool,
    ) -> None:
        """Build ``<role>_quant`` for every role from ``specs`` and the prefixed ``overrides``."""
        name = type(self).__name__
        split = split_overrides(name, overrides, self.quant_roles, _constructor_kwargs(type(self)))
        for role in self.quant_roles:
            self.register_module(f"{role}_quant", make_quantizer(name, role, specs[role], split[role], layouts.get(role)))
        if not isinstance(return_quant_tensor, bool):
            raise TypeError(f"{name}: return_quant_tensor must be True or False, got {return_quant_tensor!r}")
        self.return_quant_tensor = return_quant_tensor

    # ---- inputs and outputs ------------------------------------------------------------------
    def _quant_input(self, x: MaybeQuant) -> MaybeQuant:
        """``input_quant(x)`` if the layer has one; else ``x`` unchanged (QuantTensor or not).
        Anything but a tensor or QuantTensor raises ``TypeError``, as ``nn`` layers do."""
        if not isinstance(x, (torch.Tensor, QuantTensor)):
            raise TypeError(f"{type(self).__name__}: input must be a torch.Tensor or QuantTensor, got {type(x).__name__}")
        if "input_multiplier" in self._buffers:
            x = self.multiply_input(dequantize(x))
        quantizer = self.input_quant
        if quantizer is None:
            return x
        return quantizer(dequantize(x))

    def set_input_multiplier(self, multiplier: Optional[torch.Tensor]) -> None:
        """Multiply every input by ``multiplier`` (one factor per input channel) before quantizing
        it; ``None`` removes the multiplier. Stored as the buffer ``input_multiplier``."""
        if multiplier is None:
            self._buffers.pop("input_multiplier", None)
            return
        if not isinstance(multiplier, torch.Tensor) or multiplier.dim() != 1:
            raise TypeError(f"{type(self).__name__}: input_multiplier must be a 1-D tensor (one factor per input channel), got {multiplier!r}")
        self.register_buffer("input_multiplier", multiplier.detach().clone())

    def multiply_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x * input_multiplier`` along the input channel axis (what the weight sees, before
        input quantization); ``x`` itself when the layer has no multiplier."""
        multiplier = self._buffers.get("input_multiplier")
        if multiplier is None:
            return x
        axis = getattr(self, "act_layout", {}).get("channel_axis", 1)
        return x * _along_channels(multiplier.to(x.dtype), x.dim(), axis)

    def _quant_output(self, y: MaybeQuant, quantizer: Optional[nn.Module]) -> MaybeQuant:
        """``quantizer(y)`` as a QuantTensor or its value, per ``return_quant_tensor``; without a
        quantizer, ``y`` as it is (a QuantTensor only if ``return_quant_tensor``)."""
        if quantizer is not None:
            y = quantizer(dequantize(y))
        return y if self.return_quant_tensor else dequantize(y)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "input_multiplier"
        if key in state_dict:  # a smoothed checkpoint: take its multiplier's shape
            self.register_buffer("input_multiplier", torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        # A quantizer that is None has no state, so its keys are unexpected (nn.Module would accept
        # them because the None submodule is registered). Quantizers turned off by
        # qlayers.disable_quantization keep theirs (a pre-hook takes their keys first).
        for role in self.quant_roles:
            if getattr(self, f"{role}_quant", None) is None:
                unexpected_keys.extend(k for k in state_dict if k.startswith(f"{prefix}{role}_quant."))

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return f"{base}, return_quant_tensor={self.return_quant_tensor}" if base else f"return_quant_tensor={self.return_quant_tensor}"

    # ---- float twin --------------------------------------------------------------------------
    @classmethod
    def float_config(cls, module: nn.Module) -> Dict[str, Any]:
        """The constructor arguments that rebuild ``module``'s configuration (no quantizers)."""
        return {}

    @classmethod
    def from_float(cls, module: nn.Module, **quant_kwargs: Any) -> "QuantLayer":
        """The quantized twin of ``module``: same configuration, same parameter values (copied)
        and training mode; ``quant_kwargs`` are this layer's quantizer arguments and overrides.

        Example::

            qlinear = QuantLinear.from_float(nn.Linear(64, 32), weight_quant=Int8WeightPerChannelFloat,
                                             input_quant=Int8ActPerTensorFloat)
        """
        if cls.float_class is None or not isinstance(module, cls.float_class):
            expected = cls.float_class.__name__ if cls.float_class else "nothing (no float twin)"
            raise TypeError(f"{cls.__name__}.from_float expects an nn.{expected}, got {type(module).__name__}")
        layer = cls(**cls.float_config(module), **quant_kwargs)
        with torch.no_grad():
            for name, param in module.named_parameters(recurse=False):
                target = getattr(layer, name)
                target.copy_(param)
                target.requires_grad_(param.requires_grad)
        return layer.train(module.training)


def _along_channels(multiplier: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """``multiplier`` shaped to broadcast along dimension ``axis`` of an ``ndim``-D tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return multiplier.reshape(shape)


def _constructor_kwargs(cls: type) -> Tuple[str, ...]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in parameters if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD)
