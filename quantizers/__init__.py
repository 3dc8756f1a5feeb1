"""qzoo numerics: number formats, scaling, observers, QuantTensors and quantizers.

This package never imports :mod:`qlayers`.
"""
from .formats import (
    E8M0,
    NAMED_FORMATS,
    ROUNDING_MODES,
    SPECIAL_POLICIES,
    FloatFormat,
    HiFloat8,
    IntFormat,
    NumberFormat,
    get_format,
    known_format_names,
    pack_fp4,
    pack_fp6,
    pack_int4,
    unpack_fp4,
    unpack_fp6,
    unpack_int4,
)

__all__ = [
    "E8M0", "NAMED_FORMATS", "ROUNDING_MODES", "SPECIAL_POLICIES", "FloatFormat", "HiFloat8",
    "IntFormat", "NumberFormat", "get_format", "known_format_names",
    "pack_fp4", "unpack_fp4", "pack_int4", "unpack_int4", "pack_fp6", "unpack_fp6",
]
from .api import quantize
from .bias_quantizer import BiasQuantizer
from .fake_quant import fake_quantize
from .observers import EMAMinMaxObserver, GlobalMinMaxObserver, LastBatchObserver, MeanObserver, Observer
from .scaling.granularity import Granularity
from .scaling.statistics import Range
from .tensor import (
    FloatQuantTensor,
    GroupwiseFloatQuantTensor,
    GroupwiseIntQuantTensor,
    IntQuantTensor,
    PackedQuantTensor,
    QuantTensor,
)
from .tensor_quantizer import RangeSource, TensorQuantizer
from .zoo import *  # noqa: F401,F403  (Quantizer, describe, mixins, predefined quantizers)
from .zoo import __all__ as _zoo_all

__all__ += [
    "quantize", "fake_quantize", "Granularity", "Range", "TensorQuantizer", "RangeSource", "BiasQuantizer",
    "Observer", "LastBatchObserver", "GlobalMinMaxObserver", "EMAMinMaxObserver", "MeanObserver",
    "QuantTensor", "IntQuantTensor", "FloatQuantTensor", "GroupwiseIntQuantTensor",
    "GroupwiseFloatQuantTensor", "PackedQuantTensor", *_zoo_all,
]
from .compile import compile_enabled, set_compile_enabled

__all__ += ["compile_enabled", "set_compile_enabled"]
