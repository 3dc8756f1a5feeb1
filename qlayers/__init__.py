"""qzoo layers: ``nn`` modules with quantized weights, biases and activations.

Port Brevitas code by changing imports (``brevitas.nn`` -> ``qlayers``, ``brevitas.quant`` ->
``quantizers``)::

    import qlayers as qnn
    from quantizers import Int8ActPerTensorFloat, Int8WeightPerChannelFloat

    conv = qnn.QuantConv2d(32, 64, 3, weight_quant=Int8WeightPerChannelFloat,
                           input_quant=Int8ActPerTensorFloat, weight_bit_width=4)

Every ``*_quant`` argument takes a quantizer class, a shared ``TensorQuantizer`` instance or None;
overrides are prefixed keyword arguments (``weight_bit_width``, ``input_group_size``) and unknown
ones raise ``TypeError``. See :mod:`qlayers.quant_layer` for inputs, outputs and
``return_quant_tensor``, and :mod:`qlayers.weight_cache` for the eval-mode weight cache.
"""
from .activation import QuantActivation, QuantHardTanh, QuantIdentity, QuantReLU, QuantSigmoid, QuantTanh
from .bias import BiasQuantizer
from .conv import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvNd,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
    QuantConvTransposeNd,
)
from .embedding import QuantEmbedding
from .linear import QuantLinear
from .merge import QuantCat, QuantEltwiseAdd
from .quant_layer import QuantLayer, dequantize
from .weight_layer import QuantWeightLayer

__all__ = [
    "QuantLinear", "QuantConv1d", "QuantConv2d", "QuantConv3d",
    "QuantConvTranspose1d", "QuantConvTranspose2d", "QuantConvTranspose3d", "QuantEmbedding",
    "QuantIdentity", "QuantReLU", "QuantSigmoid", "QuantTanh", "QuantHardTanh",
    "QuantEltwiseAdd", "QuantCat",
    "QuantLayer", "QuantWeightLayer", "QuantConvNd", "QuantConvTransposeNd", "QuantActivation",
    "BiasQuantizer", "dequantize",
]
