"""Element number formats: exact rounding, bit codes and value grids."""
from .base import NumberFormat
from .e8m0 import E8M0
from .floating import SPECIAL_POLICIES, FloatFormat
from .hifloat8 import HiFloat8
from .integer import IntFormat
from .packing import pack_fp4, pack_fp6, pack_int4, unpack_fp4, unpack_fp6, unpack_int4
from .registry import NAMED_FORMATS, get_format, known_format_names
from .rounding import ROUNDING_MODES

__all__ = [
    "NumberFormat", "FloatFormat", "IntFormat", "HiFloat8", "E8M0",
    "pack_fp4", "unpack_fp4", "pack_int4", "unpack_int4", "pack_fp6", "unpack_fp6",
    "NAMED_FORMATS", "get_format", "known_format_names", "SPECIAL_POLICIES", "ROUNDING_MODES",
]
