"""The error a quantizer configuration raises."""
from __future__ import annotations

from typing import Optional


class QuantizerConfigError(ValueError):
    """A quantizer's attributes are invalid or contradict each other.

    ``attribute`` names the attribute at fault (``None`` for a combination), ``quantizer`` the
    class, once known; ``detail`` is the message without the class name."""

    def __init__(self, detail: str, attribute: Optional[str] = None, quantizer: Optional[str] = None) -> None:
        super().__init__(f"{quantizer}: {detail}" if quantizer else detail)
        self.detail, self.attribute, self.quantizer = detail, attribute, quantizer

    def naming(self, quantizer: str) -> "QuantizerConfigError":
        """The same error with ``quantizer`` (a class name) in front of the message."""
        return type(self)(self.detail, self.attribute, quantizer)

    def located(self, where: str) -> "QuantizerConfigError":
        """The same error with ``where`` (a config key path such as ``weights.rounding``, or
        ``QuantLinear.weight_quant``) in front: ``weights.rounding='nearest' is not allowed; ...``."""
        key = where.rsplit(".", 1)[-1]
        if self.attribute and key == self.attribute and self.detail.startswith(self.attribute + "="):
            text = where + self.detail[len(self.attribute):] + (f" (quantizer {self.quantizer})" if self.quantizer else "")
        else:
            text = f"{where}: {self}"
        error = type(self)(text, self.attribute)
        error.quantizer = self.quantizer
        return error


class QuantizerAttributeTypeError(QuantizerConfigError, TypeError):
    """An attribute holds a value of the wrong type (``bit_width="8"``)."""
