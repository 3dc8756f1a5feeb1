"""Element number formats: exact rounding, bit codes and value grids."""
from .base import NumberFormat
from .floating import SPECIAL_POLICIES, FloatFormat
from .rounding import ROUNDING_MODES

__all__ = ["NumberFormat", "FloatFormat", "SPECIAL_POLICIES", "ROUNDING_MODES"]
