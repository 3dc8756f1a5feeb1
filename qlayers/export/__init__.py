"""Artefacts of a quantized model: packed checkpoints, compressed-tensors, ONNX, frozen packed inference.

- :func:`save_packed` / :func:`load_packed` (:mod:`qlayers.export.checkpoint`): every quantized
  weight in real low-bit safetensors storage plus a JSON manifest; loading rebuilds the model.
- ``save_packed(..., format="compressed-tensors")`` (:mod:`qlayers.export.compressed_tensors`):
  the layout vLLM and transformers load.
- :func:`export_onnx` (:mod:`qlayers.export.onnx`): ONNX Q/DQ graphs.
- :func:`freeze` (:mod:`qlayers.export.freeze`): layers keep only packed weights and dequantize
  them in forward.
"""
from .checkpoint import SizeReport, load_packed, save_packed
from .freeze import PackedWeight, freeze
from .manifest import CheckpointError
from .onnx import export_onnx
from .onnx_types import ExportError

__all__ = ["save_packed", "load_packed", "freeze", "SizeReport", "PackedWeight", "CheckpointError", "export_onnx", "ExportError"]
