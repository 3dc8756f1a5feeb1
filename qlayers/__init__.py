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

Choices where Brevitas and the design leave room:

- A disabled quantizer is the attribute ``None`` (``layer.input_quant is None``), not a
  pass-through proxy; ``quant_weight()`` is then ``None`` too.
- ``return_quant_tensor=True`` returns a QuantTensor only when something quantizes the output
  (``output_quant`` / ``act_quant``, or a QuantTensor passing unchanged through an activation
  without ``act_quant``); Brevitas's derived "accumulator" QuantTensor of a layer without an
  output quantizer is not produced. ``QuantEltwiseAdd`` and ``QuantCat`` follow the same rule.
- Standalone activation and merge layers know nothing of the tensor's layout: their quantizers
  default to ``channel_axis=1`` and ``group_dim=-1`` (override with ``act_group_dim`` etc.).
- Input-scale biases (``Int32Bias``) need a per-tensor input scale and a per-tensor or
  per-output-channel weight scale; anything else raises ``ValueError`` at forward time.
- The eval cache is never stale: it serves the quantized weight again only for the same weight
  object (weakly referenced, never keyed on ``id()``), version counter and quantizer state, and a
  64-bit checksum of all the weight's bytes, computed in one read per forward, catches the writes
  torch does not count (``weight.data``, NumPy views, fused optimizers). ``cache_checks_values =
  "full"`` compares a full copy instead, ``"none"`` trusts version counters and optimizer steps.
  ``quant_weight()`` returns the caller's own copy; stochastic weight rounding in eval draws from a
  generator seeded with ``eval_rounding_seed``, so it is reproducible. ``quant_inference_mode(model)``
  (Brevitas's context) serves cached weights without the per-forward checksum and checks them once
  on exit.
"""
from .attention import QuantScaledDotProductAttention
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
from .hf_conv1d import QuantConv1D
from .linear import QuantLinear
from .merge import QuantCat, QuantEltwiseAdd
from .quant_layer import QuantLayer, dequantize
from .weight_layer import QuantWeightLayer

__all__ = [
    "QuantLinear", "QuantConv1d", "QuantConv2d", "QuantConv3d",
    "QuantConvTranspose1d", "QuantConvTranspose2d", "QuantConvTranspose3d", "QuantEmbedding",
    "QuantIdentity", "QuantReLU", "QuantSigmoid", "QuantTanh", "QuantHardTanh",
    "QuantEltwiseAdd", "QuantCat", "QuantScaledDotProductAttention",
    "QuantLayer", "QuantWeightLayer", "QuantConvNd", "QuantConvTransposeNd", "QuantActivation",
    "BiasQuantizer", "dequantize",
]

from . import compat, ptq
from .export import ExportError, export_onnx, freeze, load_packed, save_packed
from .model import calibrate, calibration_mode, load_config, quant_inference_mode, quantization_disabled, quantize_model, summary

__all__ += ["quantize_model", "load_config", "calibrate", "calibration_mode", "quantization_disabled", "summary", "compat", "ptq", "export_onnx", "ExportError"]
__all__ += ["quant_inference_mode"]

from . import evaluate, transforms
from .transforms import rotate

__all__ += ["transforms", "rotate", "evaluate"]
__all__ += ["save_packed", "load_packed", "freeze"]
__all__ += ["QuantizedKVCache", "QuantConv1D"]


def __getattr__(name: str):
    """``QuantizedKVCache`` subclasses transformers' ``Cache``: it is imported (with transformers)
    when first asked for, so ``import qlayers`` does not need transformers."""
    if name == "QuantizedKVCache":
        from .kv_cache import QuantizedKVCache

        return QuantizedKVCache
    raise AttributeError(f"module 'qlayers' has no attribute {name!r}")
