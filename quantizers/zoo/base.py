"""The root of every quantizer class, resolution to validated attributes, and ``describe``.

A quantizer is a plain Python class whose class attributes describe it. Mixins set a few
attributes each, and attributes resolve in Python's MRO (leftmost base wins), so::

    class OCPFP8Weight(FpOCPWeightPerTensorFloat, Fp8e4m3Mixin):
        pass

reads the format from ``Fp8e4m3Mixin`` and the scaling from ``FpOCPWeightPerTensorFloat``.
The attributes a class may set are the fields of
:class:`~quantizers.zoo.attributes.QuantizerAttributes`; their defaults live only on
:class:`Quantizer`, the one base every mixin shares, so a default can never shadow a mixin that
comes later in the MRO. Setting any other public attribute on a quantizer class (in its body or
later, ``MyQ.bitwidth = 4``) raises ``TypeError`` with the close match.
"""
from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Dict, Mapping, Optional, Tuple, Type

from .attributes import ATTRIBUTE_NAMES, QuantizerAttributes
from .errors import QuantizerConfigError

_METHOD_TYPES = (classmethod, staticmethod, property, functools.cached_property)


def _check_class_attribute(cls: type, name: str, value: Any) -> None:
    if name.startswith("_") or name in ATTRIBUTE_NAMES or inspect.isfunction(value) or isinstance(value, _METHOD_TYPES):
        return
    raise TypeError(f"{cls.__name__} sets {name!r}, which is not a quantizer attribute{_suggestion(name)}")


class _QuantizerType(type):
    """Checks names set on a quantizer class after its creation too (``MyQ.bitwidth = 4``)."""

    def __setattr__(cls, name: str, value: Any) -> None:
        _check_class_attribute(cls, name, value)
        super().__setattr__(name, value)


class Quantizer(metaclass=_QuantizerType):
    """Root quantizer: every attribute of :class:`~quantizers.zoo.attributes.QuantizerAttributes`
    with its default (``describe(Q)`` lists a class's values and where each comes from;
    ``docs/quantizers.md`` documents each attribute).

    Subclasses set attributes as class attributes; private names (``_x``) and methods are free.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            _check_class_attribute(cls, name, value)

    @classmethod
    def with_overrides(cls, **overrides: Any) -> Type["Quantizer"]:
        """A subclass with ``overrides`` applied; unknown names raise ``TypeError``."""
        if not overrides:
            return cls
        check_attribute_names(cls, overrides)
        return type(cls.__name__, (cls,), {"__module__": cls.__module__, **overrides})


for _field in QuantizerAttributes.__dataclass_fields__.values():
    setattr(Quantizer, _field.name, _field.default)


def _suggestion(name: str, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, ATTRIBUTE_NAMES, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {', '.join(prefix + c for c in close)}?"
    return "; the attributes are the fields of quantizers.QuantizerAttributes (see describe(Q))"


def is_quantizer_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, Quantizer)


def check_quantizer_class(value: Any, argument: str = "quantizer") -> None:
    """Raise ``TypeError`` unless ``value`` is a quantizer class, saying what to pass instead."""
    if is_quantizer_class(value):
        return
    if isinstance(value, str):
        hint = f"; pass the class itself, e.g. quantizers.{value}" if value.isidentifier() else ""
        raise TypeError(f"{argument} must be a quantizer class (a subclass of quantizers.Quantizer), got the string {value!r}{hint}")
    raise TypeError(f"{argument} must be a quantizer class (a subclass of quantizers.Quantizer), got {value!r}")


def check_attribute_names(quantizer: Type[Quantizer], overrides: Mapping[str, Any], prefix: str = "") -> None:
    """Raise ``TypeError`` for override names that are not quantizer attributes, suggesting close ones."""
    for name in overrides:
        if name not in ATTRIBUTE_NAMES:
            raise TypeError(f"unknown quantizer override {prefix + name!r} for {quantizer.__name__}{_suggestion(name, prefix)}")


def resolve_attributes(quantizer: Type[Quantizer], **overrides: Any) -> QuantizerAttributes:
    """The validated attributes of ``quantizer`` (resolved in Python's MRO) with ``overrides``.

    Raises ``TypeError`` for a non-quantizer or an unknown override name, and
    :class:`QuantizerConfigError` naming the class, the attribute, the value and the allowed values
    for a bad value or combination. Example::

        >>> resolve_attributes(Int8WeightPerChannelFloat, bit_width=4).number_format.name
        'int4_narrow'
    """
    check_quantizer_class(quantizer)
    check_attribute_names(quantizer, overrides)
    values = {name: overrides[name] if name in overrides else getattr(quantizer, name) for name in ATTRIBUTE_NAMES}
    try:
        return QuantizerAttributes(**values)
    except QuantizerConfigError as error:
        raise error.naming(quantizer.__name__) from None


def attribute_sources(quantizer: Type[Quantizer]) -> Dict[str, Tuple[Any, str]]:
    """``{name: (value, defining class name)}``, the class being the first in the MRO defining it."""
    sources = {}
    for name in ATTRIBUTE_NAMES:
        owner = next(k for k in quantizer.__mro__ if name in vars(k))
        sources[name] = (getattr(quantizer, name), owner.__name__)
    return sources


def describe(quantizer: Type[Quantizer], **overrides: Any) -> str:
    """A table of the quantizer's attributes, their values and the class each comes from (or
    ``override``); attributes that do not apply to it are marked ``(unused)``."""
    if not is_quantizer_class(quantizer):
        raise TypeError(f"describe() takes a quantizer class, got {quantizer!r}")
    check_attribute_names(quantizer, overrides)
    rows = attribute_sources(quantizer)
    rows.update({name: (value, "override") for name, value in overrides.items()})
    resolved: Optional[QuantizerAttributes]
    try:
        resolved = resolve_attributes(quantizer, **overrides)
    except QuantizerConfigError:
        resolved = None
    width = max(len(n) for n in rows)
    lines = [f"{quantizer.__name__}:"]
    for name, (value, owner) in rows.items():
        unused = " (unused)" if resolved is not None and not _applies(resolved, name) else ""
        lines.append(f"  {name:<{width}} = {_text(value):<22} # from {owner}{unused}")
    return "\n".join(lines)


def _applies(attributes: QuantizerAttributes, name: str) -> bool:
    applies = QuantizerAttributes.__dataclass_fields__[name].metadata["applies"]
    return applies is None or applies.test(attributes)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, (int, float, bool, tuple, type(None))):
        return repr(value)
    return getattr(value, "name", None) or repr(value)


__all__ = ["Quantizer", "QuantizerConfigError", "resolve_attributes", "describe", "check_attribute_names"]
