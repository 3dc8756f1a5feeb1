"""Single-value checks of quantizer attributes: each normalises a value or rejects it, and says
in words what it allows (the *allowed values* column of ``docs/quantizers.md``)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..formats import ROUNDING_MODES, NumberFormat
from ..observers import OBSERVERS, Observer
from ..scaling.scalers import Scaler
from .modes import Scaling


class Invalid(Exception):
    """A value a check rejects; ``wrong_type`` for a value of the wrong type."""

    def __init__(self, wrong_type: bool = False) -> None:
        self.wrong_type = wrong_type


@dataclass(frozen=True)
class Check:
    """A single-value check: ``normalise(value)`` returns the stored value or raises ``Invalid``;
    ``allowed`` says in words what is allowed."""

    allowed: str
    normalise: Callable[[Any], Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def optional(check: Check) -> Check:
    return Check(f"{check.allowed} or None", lambda v: None if v is None else check.normalise(v))


def mode(enum: type) -> Check:
    members = {member.value: member for member in enum}

    def normalise(value):
        if isinstance(value, str) and value in members:
            return members[value]
        raise Invalid(not isinstance(value, str))

    return Check(", ".join(members), normalise)


def boolean() -> Check:
    def normalise(value):
        if not isinstance(value, bool):
            raise Invalid(True)
        return value

    return Check("True, False", normalise)


def integer(minimum: Optional[int] = None) -> Check:
    def normalise(value):
        if not _is_int(value):
            raise Invalid(True)
        if minimum is not None and value < minimum:
            raise Invalid()
        return int(value)

    return Check("an int" + (f" >= {minimum}" if minimum is not None else ""), normalise)


def number(low: float, high: float, low_open: bool = True) -> Check:
    def normalise(value):
        if not _is_real(value):
            raise Invalid(True)
        if not ((low < value) if low_open else (low <= value)) or not value <= high:
            raise Invalid()
        return float(value)

    return Check(f"a number in {'(' if low_open else '['}{low:g}, {high:g}]", normalise)


def int_pair() -> Check:
    def normalise(value):
        if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_int(n) for n in value):
            raise Invalid(True)
        if min(value) <= 0:
            raise Invalid()
        return tuple(int(n) for n in value)

    return Check("a pair (rows, cols) of positive ints", normalise)


def ratios() -> Check:
    def normalise(value):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise Invalid(True)
        items = list(value.tolist() if hasattr(value, "tolist") else value)
        if not all(_is_real(r) for r in items):
            raise Invalid(True)
        if not items or not all(math.isfinite(r) and r > 0 for r in items):
            raise Invalid()
        return tuple(float(r) for r in items)

    return Check("a non-empty sequence of finite numbers > 0", normalise)


def float_range_pair() -> Check:
    def normalise(value):
        if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(v is None or _is_real(v) for v in value):
            raise Invalid(True)
        low, high = (None if v is None else float(v) for v in value)
        if any(v is not None and not math.isfinite(v) for v in (low, high)):
            raise Invalid()
        if (low is not None and low > 0) or (high is not None and high < 0):
            raise Invalid()
        if low is not None and high is not None and low >= high:
            raise Invalid()
        return (low, high)

    return Check("a pair (min, max) of finite numbers with min <= 0 <= max and min < max (either may be None)", normalise)


def element_format() -> Check:
    def normalise(value):
        if not isinstance(value, (str, NumberFormat)):
            raise Invalid(True)
        return value

    return Check("a format name or NumberFormat object (integer, minifloat or HiFloat8)", normalise)


def rounding_mode() -> Check:
    def normalise(value):
        if value not in ROUNDING_MODES:
            raise Invalid(not isinstance(value, str))
        return value

    return Check(", ".join(ROUNDING_MODES), normalise)


def scaling_rule() -> Check:
    names = mode(Scaling)

    def normalise(value):
        if isinstance(value, Scaler) or (isinstance(value, type) and issubclass(value, Scaler)):
            return value
        return names.normalise(value)

    return Check(f"{names.allowed}, or a Scaler subclass (built as cls(fmt)) or instance", normalise)


def observer_kind() -> Check:
    def normalise(value):
        if isinstance(value, type) and issubclass(value, Observer):
            return value
        if isinstance(value, str) and value in OBSERVERS:
            return value
        raise Invalid(not isinstance(value, str))

    return Check(", ".join(OBSERVERS) + ", an Observer subclass (built as cls())", normalise)
