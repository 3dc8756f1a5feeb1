"""QuantTensor family: quantized tensors that behave like their dequantized values.

``IntQuantTensor`` / ``FloatQuantTensor`` (per tensor or per channel) and
``GroupwiseIntQuantTensor`` / ``GroupwiseFloatQuantTensor`` (one scale per group of ``group_size``
along ``group_dim``, stored in Brevitas's grouped layout). See :mod:`quantizers.tensor.base` for the
fields and canonical formulas, :mod:`quantizers.tensor.ops` for which torch ops keep the
quantization, :mod:`quantizers.tensor.packed` for low-bit storage.

All classes are registered with ``torch.serialization.add_safe_globals`` so QuantTensors and
PackedQuantTensors load with the default ``torch.load(weights_only=True)``.
"""
import torch

from ..formats import E8M0, FloatFormat, HiFloat8, IntFormat
from . import ops  # noqa: F401  (registers the torch-function handlers)
from .base import QuantTensor
from .grouping import from_groups, group_count, grouped_shape, to_groups
from .groupwise import GroupwiseQuantTensor
from .kinds import FloatQuantTensor, GroupwiseFloatQuantTensor, GroupwiseIntQuantTensor, IntQuantTensor
from .packed import PackedQuantTensor, pack

torch.serialization.add_safe_globals([
    IntQuantTensor, FloatQuantTensor, GroupwiseIntQuantTensor, GroupwiseFloatQuantTensor, PackedQuantTensor,
    IntFormat, FloatFormat, HiFloat8, E8M0,
])

__all__ = [
    "QuantTensor", "IntQuantTensor", "FloatQuantTensor", "GroupwiseQuantTensor", "GroupwiseIntQuantTensor",
    "GroupwiseFloatQuantTensor", "PackedQuantTensor", "pack", "to_groups", "from_groups", "grouped_shape",
    "group_count",
]
