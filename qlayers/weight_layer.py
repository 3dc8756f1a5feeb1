"""Layers with a weight (and bias): the quantized weight, its eval-mode cache, the quantized bias
and the forward template ``output_quant(op(input_quant(x), quant_weight(), quant_bias))``."""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Union

import torch
from torch import nn

from quantizers import QuantTensor, TensorQuantizer
from quantizers.compile import is_tracing

from .bias import BiasQuantizer, accumulator_scales
from .quant_layer import MaybeQuant, QuantLayer, dequantize
from .quant_args import Layout, QuantizerSpec
from .weight_cache import INFERENCE, WeightCache


class QuantWeightLayer(QuantLayer):
    """Base of QuantLinear, QuantConv*, QuantConvTranspose* (and, weight only, QuantEmbedding).

    Class attributes:
        weight_layout: ``{"channel_axis", "group_dim"}`` of the weight (output channels, reduction axis).
        act_layout: the same for the input and output activations.
        cache_quant_weight: serve the quantized weight from a cache in eval mode (see
            :mod:`qlayers.weight_cache`); set ``False`` on a layer or class to always recompute.
        cache_checks_values: how the cache sees writes that torch's version counter misses
            (``weight.data``, NumPy views, fused optimizers): ``"checksum"`` (default, a 64-bit hash
            of the whole weight per forward), ``"full"`` (a copy compared bit for bit) or ``"none"``
            (version counters, identity and optimizer steps only).
        eval_rounding_seed: the seed of the noise a ``rounding="stochastic"`` weight quantizer draws
            in eval mode. Every eval computation of the weight draws afresh from a generator seeded
            with it, so the eval weight is a function of the weight and the quantizer alone: two
            layers with the same state give the same output, and clearing the cache (``.to()``,
            ``train()``/``eval()``, ``load_state_dict``) changes nothing. Training draws from
            torch's global generator, as dropout does (also under ``torch.compile``).
    """

    quant_roles = ("weight", "bias", "input", "output")
    weight_layout: ClassVar[Layout] = {"channel_axis": 0, "group_dim": 1}
    act_layout: ClassVar[Layout] = {"channel_axis": -1, "group_dim": -1}
    cache_quant_weight: bool = True
    cache_checks_values: str = "checksum"
    _quant_inference_depth: int = 0  # open qlayers.quant_inference_mode(cache_quant_weight=True) contexts
    eval_rounding_seed: int = 0

    def _init_weight_quantizers(
        self,
        weight_quant: QuantizerSpec,
        bias_quant: QuantizerSpec,
        input_quant: QuantizerSpec,
        output_quant: QuantizerSpec,
        return_quant_tensor: bool,
        overrides: Dict[str, Any],
    ) -> None:
        specs = dict(weight=weight_quant, bias=bias_quant, input=input_quant, output=output_quant)
        layouts = dict(
            weight=self.weight_layout, bias={"channel_axis": 0, "group_dim": 0},
            input=self.act_layout, output=self.act_layout,
        )
        self._init_quantizers({r: specs[r] for r in self.quant_roles}, overrides, layouts, return_quant_tensor)
        self._weight_cache = WeightCache()
        self._check_weight_axis()

    def _check_weight_axis(self) -> None:
        """An out-of-range channel axis or group dimension of the weight quantizer is an error now,
        naming the layer and the override, not at the first forward."""
        granularity = getattr(self.weight_quant, "granularity", None)
        if granularity is None or granularity.kind not in ("channel", "group"):
            return
        ndim = self.weight.dim()
        if not -ndim <= granularity.axis < ndim:
            option = "weight_channel_axis" if granularity.kind == "channel" else "weight_group_dim"
            raise ValueError(
                f"{type(self).__name__}: {option}={granularity.axis} is out of range for its weight of shape "
                f"{tuple(self.weight.shape)}; allowed: {-ndim}..{ndim - 1}"
            )

    # ---- weight ------------------------------------------------------------------------------
    def quant_weight(self) -> Optional[QuantTensor]:
        """The quantized weight (``None`` when ``weight_quant`` is None), the caller's own object.

        In eval mode it comes from the layer's cache (until the weight, the weight quantizer or the
        mode changes; see :mod:`qlayers.weight_cache`) as a copy with cloned tensors, so in-place
        work on the result never reaches later forwards. It is recomputed in training, under
        ``torch.compile`` and whenever autograd needs the weight's gradient.
        """
        return self._quant_weight(copy=True)

    def _quant_weight(self, copy: bool = False) -> Optional[QuantTensor]:
        """:meth:`quant_weight`; for the layer's own use (``copy=False``) a cached QuantTensor is
        returned itself, not copied."""
        packed = self._modules.get("packed_weight")
        if packed is not None:  # qlayers.freeze: the weight lives only in packed storage
            return packed()
        quantizer, weight = self.weight_quant, self.weight
        if quantizer is None:
            return None
        generator = self._eval_generator(quantizer, weight)
        inference = self._quant_inference_depth > 0  # inside qlayers.quant_inference_mode(cache_quant_weight=True)
        if (
            self.training
            or not (self.cache_quant_weight or inference)
            or is_tracing()
            or (weight.requires_grad and torch.is_grad_enabled())
            or weight is not self._parameters.get("weight")  # parametrized: a new tensor per access
        ):
            return _run(quantizer, weight, generator)
        self._weight_cache.check_values = INFERENCE if inference else self.cache_checks_values
        compute = lambda: _run(quantizer, weight, generator)  # noqa: E731
        cached = self._weight_cache.get(weight, quantizer, compute, extra=self.eval_rounding_seed)
        return cached.clone() if copy else cached

    def _eval_generator(self, quantizer: nn.Module, weight: torch.Tensor) -> Optional[torch.Generator]:
        """A generator seeded with ``eval_rounding_seed`` for a stochastic weight quantizer in eval
        mode (outside ``torch.compile``), else None (torch's global generator)."""
        if self.training or getattr(quantizer, "rounding", None) != "stochastic" or is_tracing():
            return None
        return torch.Generator(device=weight.device).manual_seed(self.eval_rounding_seed)

    def __getstate__(self) -> Dict[str, Any]:
        """Pickled and deep-copied outside :class:`~qlayers.quant_inference_mode`: a copy made inside
        the context is not in it (no context would ever leave it)."""
        state = super().__getstate__()
        state.pop("_quant_inference_depth", None)
        return state

    def clear_weight_cache(self) -> None:
        """Forget the cached quantized weight (needed only with ``cache_checks_values = "none"``,
        after writes through ``.data`` or NumPy)."""
        self._weight_cache.clear()

    def _weight_value(self, quant_weight: Optional[QuantTensor]) -> torch.Tensor:
        return self.weight if quant_weight is None else quant_weight.value

    # ---- bias --------------------------------------------------------------------------------
    def bias_channels(self) -> Dict[str, int]:
        """Keyword arguments of :func:`~qlayers.bias.accumulator_scales` for this layer's bias."""
        return {"out_channels": self.bias.shape[0]}

    def quant_bias(
        self, quant_input: Optional[QuantTensor] = None, quant_weight: Optional[QuantTensor] = None
    ) -> Union[torch.Tensor, QuantTensor, None]:
        """The bias as the layer adds it: ``None`` without a bias, the float bias without
        ``bias_quant``, else a QuantTensor (an ``IntQuantTensor`` at scale input scale x weight
        scale for ``Int8Bias``/``Int16Bias``/``Int32Bias``).

        ``quant_input`` is the quantized input (needed by input-scale bias quantizers);
        ``quant_weight`` defaults to :meth:`quant_weight`.
        """
        bias, quantizer = self.bias, self.bias_quant
        if bias is None or quantizer is None:
            return bias
        if not isinstance(quantizer, BiasQuantizer):
            return _run(quantizer, bias, None)
        if quant_weight is None:
            quant_weight = self._quant_weight()
        input_scale, weight_scale = accumulator_scales(type(self).__name__, quant_input, quant_weight, **self.bias_channels())
        return quantizer(bias, input_scale, weight_scale)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, input: MaybeQuant, *args: Any, **kwargs: Any) -> MaybeQuant:
        """``output_quant(op(x, w, b))`` with ``x`` the (quantized) input, ``w`` the quantized
        weight and ``b`` the (quantized) bias; ``op`` is the float module's (F.linear, F.conv2d, ...)."""
        x = self._quant_input(input)
        quant_weight = self._quant_weight()
        quant_input = x if isinstance(x, QuantTensor) else None
        bias = self.quant_bias(quant_input, quant_weight)
        y = self.quant_op(dequantize(x), self._weight_value(quant_weight), dequantize(bias), *args, **kwargs)
        return self._quant_output(y, self.output_quant)

    def quant_op(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The float module's operation on (dequantized) tensors; subclasses define it."""
        raise NotImplementedError

    # ---- cache invalidation ------------------------------------------------------------------
    def train(self, mode: bool = True) -> "QuantWeightLayer":
        self._weight_cache.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._weight_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._weight_cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)


def _run(quantizer: nn.Module, weight: torch.Tensor, generator: Optional[torch.Generator]) -> QuantTensor:
    """``quantizer(weight)`` for a weight or bias: a :class:`~quantizers.TensorQuantizer` is told the
    shape never changes (``static_shape=True``: shape-specialised compiled kernels); ``generator=``
    is passed only when there is one (any module may quantize)."""
    if isinstance(quantizer, TensorQuantizer):
        return quantizer(weight, generator=generator, static_shape=True)
    return quantizer(weight) if generator is None else quantizer(weight, generator=generator)
