"""Artefacts of a quantized model: ONNX (:func:`export_onnx`)."""
from .onnx import export_onnx
from .onnx_types import ExportError

__all__ = ["export_onnx", "ExportError"]
