"""Export twins: the quantized layers rebuilt from ONNX operators, swapped into the model while
``torch.onnx.export`` traces it.

A twin keeps no float weight: its weight (and a quantized bias) is an
:class:`~qlayers.export.onnx_weights.OnnxDequantize` of the layer's quantized weight, its input and
output quantizers are :class:`~qlayers.export.onnx_acts.OnnxQuantizeDequantize`, and it calls the
layer's own float operation (``quant_op``: ``F.linear``, ``F.conv*``, ``F.conv_transpose*``; the
embedding lookup; the activation function) on them. Submodules are named after the layer's roles,
so the initializers are ``<layer>.weight.codes``, ``<layer>.weight.scale``,
``<layer>.input_quant.scale``, ... and the dequantized weight is the value ``<layer>.weight``.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from quantizers import QuantTensor

from ..activation import QuantActivation
from ..attention import QuantScaledDotProductAttention, attend
from ..bias import BiasQuantizer
from ..conv import QuantConvNd, QuantConvTransposeNd
from ..embedding import QuantEmbedding
from ..linear import QuantLinear
from ..merge import QuantCat, QuantEltwiseAdd
from ..quant_layer import QuantLayer
from .onnx_acts import OnnxQuantizeDequantize
from .onnx_types import ExportError
from .onnx_weights import OnnxDequantize

SUPPORTED_LAYERS = (
    "QuantLinear, QuantConv1d/2d/3d, QuantConvTranspose1d/2d/3d, QuantEmbedding, QuantIdentity, QuantReLU, "
    "QuantSigmoid, QuantTanh, QuantHardTanh, QuantEltwiseAdd, QuantCat, QuantScaledDotProductAttention"
)
Samples = Dict[int, torch.Tensor]  # id(quantizer) -> the first tensor it quantized in the probe forward


def _act(layer: QuantLayer, role: str, samples: Samples, target: str, where: str) -> Optional[OnnxQuantizeDequantize]:
    quantizer = getattr(layer, f"{role}_quant", None)
    if quantizer is None:
        return None
    return OnnxQuantizeDequantize(quantizer, samples.get(id(quantizer)), target, f"{where} {role}_quant")


def _call(module: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    return x if module is None else module(x)


class OnnxWeightLayer(nn.Module):
    """The twin of a QuantLinear / QuantConv* / QuantConvTranspose* / QuantEmbedding."""

    def __init__(self, layer: QuantLayer, samples: Samples, target: str, where: str) -> None:
        super().__init__()
        if isinstance(layer, QuantEmbedding) and layer.max_norm is not None:
            raise ExportError(f"{where}: max_norm renormalises the float weight in place at run time; export without max_norm")
        self.input_quant = _act(layer, "input", samples, target, where) if "input" in layer.quant_roles else None
        self.output_quant = _act(layer, "output", samples, target, where) if "output" in layer.quant_roles else None
        with torch.no_grad():
            quant_weight = layer.quant_weight()
            if quant_weight is None:
                self.register_buffer("weight", layer.weight.detach().clone())
            else:
                self.weight = OnnxDequantize(quant_weight, target, f"{where} weight")
            self._init_bias(layer, quant_weight, samples, target, where)
        # the float operation, a bound method (not a submodule: the float weight stays out of the graph)
        self.__dict__["_op"] = layer._lookup if isinstance(layer, QuantEmbedding) else layer.quant_op
        self.lookup = isinstance(layer, QuantEmbedding)

    def _init_bias(self, layer, quant_weight, samples, target, where) -> None:
        bias = getattr(layer, "bias", None)
        quantizer = getattr(layer, "bias_quant", None)
        if bias is None or quantizer is None:
            self.register_buffer("bias", None if bias is None else bias.detach().clone())
            return
        quant_input = None
        if isinstance(quantizer, BiasQuantizer):
            if self.input_quant is None or self.input_quant.dynamic is not None:
                raise ExportError(
                    f"{where}: its bias quantizer scales by the input scale, which must be static to export "
                    "(give the layer a calibrated per-tensor input_quant, or a bias quantizer with its own scale)"
                )
            quant_input = layer.input_quant(samples[id(layer.input_quant)])
        try:
            quant_bias = layer.quant_bias(quant_input if isinstance(quant_input, QuantTensor) else None, quant_weight)
        except ValueError as error:
            raise ExportError(f"{where}: {error}") from None
        self.bias = OnnxDequantize(quant_bias, target, f"{where} bias")

    def forward(self, input: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = _call(self.input_quant, input)
        weight = self.weight() if isinstance(self.weight, OnnxDequantize) else self.weight
        if self.lookup:
            y = self._op(x, weight)
        else:
            bias = self.bias() if isinstance(self.bias, OnnxDequantize) else self.bias
            y = self._op(x, weight, bias, *args, **kwargs)
        return _call(self.output_quant, y)


class OnnxActivation(nn.Module):
    """The twin of a QuantIdentity / QuantReLU / QuantSigmoid / QuantTanh / QuantHardTanh."""

    def __init__(self, layer: QuantActivation, samples: Samples, target: str, where: str) -> None:
        super().__init__()
        self.input_quant = _act(layer, "input", samples, target, where)
        self.act_quant = _act(layer, "act", samples, target, where)
        self.__dict__["_activation"] = layer.activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _call(self.act_quant, self._activation(_call(self.input_quant, input)))


class OnnxEltwiseAdd(nn.Module):
    """The twin of a QuantEltwiseAdd: ``output_quant(input_quant(a) + input_quant(b))``."""

    def __init__(self, layer: QuantEltwiseAdd, samples: Samples, target: str, where: str) -> None:
        super().__init__()
        self.input_quant = _act(layer, "input", samples, target, where)
        self.output_quant = _act(layer, "output", samples, target, where)

    def forward(self, input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return _call(self.output_quant, _call(self.input_quant, input) + _call(self.input_quant, other))


class OnnxCat(OnnxEltwiseAdd):
    """The twin of a QuantCat: ``output_quant(cat([input_quant(t) for t in tensors], dim))``."""

    def forward(self, tensors: List[torch.Tensor], dim: int = 0) -> torch.Tensor:  # type: ignore[override]
        return _call(self.output_quant, torch.cat([_call(self.input_quant, t) for t in tensors], dim=dim))


class OnnxAttention(nn.Module):
    """The twin of a QuantScaledDotProductAttention: its own computation
    (:func:`qlayers.attention.attend`) with every quantizer as QuantizeLinear -> DequantizeLinear,
    written out as ``MatMul``, ``Softmax`` and the mask ops (``Where``, ``Add``), never torch's fused
    SDPA kernel. Dropout has no inference form: ``dropout_p > 0`` raises."""

    def __init__(self, layer: QuantScaledDotProductAttention, samples: Samples, target: str, where: str) -> None:
        super().__init__()
        for role in layer.quant_roles:
            setattr(self, f"{role}_quant", _act(layer, role, samples, target, where))
        for name in ("pre_process_q", "pre_process_k", "pre_process_v"):
            self.__dict__[name] = getattr(layer, name)  # plain callables or modules of the float model
        self.where = where

    def forward(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if dropout_p > 0.0:
            raise ExportError(f"{self.where}: dropout_p={dropout_p} is random at run time; export the model in eval mode with dropout_p=0")
        y = attend(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, fused=False)
        return _call(self.sdpa_output_quant, y)


_TWINS: Tuple[Tuple[type, type], ...] = (
    (QuantLinear, OnnxWeightLayer), (QuantConvNd, OnnxWeightLayer), (QuantConvTransposeNd, OnnxWeightLayer),
    (QuantEmbedding, OnnxWeightLayer), (QuantActivation, OnnxActivation), (QuantCat, OnnxCat),
    (QuantEltwiseAdd, OnnxEltwiseAdd), (QuantScaledDotProductAttention, OnnxAttention),
)


def quant_layers(model: nn.Module) -> Iterator[Tuple[str, QuantLayer]]:
    """``(name, layer)`` of every quantized layer (not those inside another one)."""
    inside: List[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, QuantLayer):
            inside.append(name)
            yield name, module


def twin_class(name: str, layer: QuantLayer) -> type:
    """The twin class of ``layer``; ``ExportError`` naming the layer if it has none."""
    for layer_class, twin in _TWINS:
        if isinstance(layer, layer_class):
            return twin
    raise ExportError(f"layer {name!r} ({type(layer).__name__}) is not supported by export_onnx; supported layers: {SUPPORTED_LAYERS}")


def build_twins(model: nn.Module, samples: Samples, target: str) -> Dict[str, nn.Module]:
    """The twin of every quantized layer, by name; raises before anything is exported."""
    return {
        name: twin_class(name, layer)(layer, samples, target, f"layer {name!r} ({type(layer).__name__})")
        for name, layer in quant_layers(model)
    }


@contextlib.contextmanager
def swapped(model: nn.Module, twins: Dict[str, nn.Module]) -> Iterator[nn.Module]:
    """``model`` with its quantized layers replaced by ``twins`` (the root itself too), restored after."""
    if "" in twins:
        yield twins[""]
        return
    originals = {}
    try:
        for name, twin in twins.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            originals[name] = getattr(parent, child)
            setattr(parent, child, twin)
        yield model
    finally:
        for name, original in originals.items():
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, original)
