"""The quantizer zoo: composable mixins and the predefined quantizers."""
from .base import Quantizer, QuantizerConfigError, describe
from .build import build_tensor_quantizer
from .mixins import *  # noqa: F401,F403
from .mixins import __dict__ as _mixins
from .predefined import *  # noqa: F401,F403
from .predefined import __dict__ as _predefined


def _public(namespace):
    return [n for n, v in namespace.items() if isinstance(v, type) and issubclass(v, Quantizer) and v is not Quantizer]


__all__ = ["Quantizer", "QuantizerConfigError", "describe", "build_tensor_quantizer", *_public(_mixins), *_public(_predefined)]
