"""The quantizer zoo: the declared attributes, composable mixins and the predefined quantizers."""
from .attributes import ATTRIBUTE_NAMES, QuantizerAttributes, attribute_table
from .base import Quantizer, check_attribute_names, describe, resolve_attributes
from .build import build_quantizer, build_tensor_quantizer
from .errors import QuantizerAttributeTypeError, QuantizerConfigError
from .mixins import *  # noqa: F401,F403
from .mixins import __dict__ as _mixins
from .modes import FloatStandard, FullRangeDivisor, GranularityKind, QuantType, RangeMethod, Role, ScaleRounding, Scaling, ZeroPointFormulation
from .predefined import *  # noqa: F401,F403
from .predefined import __dict__ as _predefined


def _public(namespace):
    return [n for n, v in namespace.items() if isinstance(v, type) and issubclass(v, Quantizer) and v is not Quantizer]


__all__ = [
    "Quantizer", "QuantizerAttributes", "QuantizerConfigError", "QuantizerAttributeTypeError", "ATTRIBUTE_NAMES",
    "attribute_table", "check_attribute_names", "describe", "resolve_attributes", "build_quantizer", "build_tensor_quantizer",
    "Role", "QuantType", "FloatStandard", "FullRangeDivisor", "Scaling", "ScaleRounding", "GranularityKind", "RangeMethod",
    "ZeroPointFormulation", *_public(_mixins), *_public(_predefined),
]
