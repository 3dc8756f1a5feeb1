"""Element number formats: exact rounding, bit codes and value grids."""
from .base import NumberFormat
from .e8m0 import E8M0
from .floating import SPECIAL_POLICIES, FloatFormat
from .hifloat8 import HiFloat8
from .integer import IntFormat
from .registry import NAMED_FORMATS, get_format, known_format_names
from .rounding import ROUNDING_MODES

__all__ = [
    "NumberFormat", "FloatFormat", "IntFormat", "HiFloat8", "E8M0",
    "NAMED_FORMATS", "get_format", "known_format_names", "SPECIAL_POLICIES", "ROUNDING_MODES",
]
