"""Turning a layer's quantizer arguments and prefixed overrides into runtime quantizer modules.

A quantizer argument (``weight_quant``, ``bias_quant``, ``input_quant``, ``output_quant``,
``act_quant``) is one of:

- a quantizer class (a subclass of :class:`quantizers.Quantizer`): the layer builds its own
  :class:`~quantizers.TensorQuantizer` with the layer's layout defaults and the overrides;
- an ``nn.Module`` instance (a :class:`~quantizers.TensorQuantizer` built once with
  :func:`quantizers.build_tensor_quantizer`): a *shared* quantizer, the same module object in every
  layer that receives it (same statistics, same scale);
- ``None``: that tensor is not quantized.

Overrides are the layer's other keyword arguments, named ``<role>_<attribute>``
(``weight_bit_width=4``, ``input_scale_rounding="rceil"``); the prefix picks the quantizer and the
rest must be one of that quantizer's attributes. Every mistake raises ``TypeError`` naming the
keyword argument as the user typed it.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Type, Union

from torch import nn

from quantizers import Quantizer, QuantizerConfigError, Role, build_quantizer, check_attribute_names, resolve_attributes

QuantizerSpec = Union[Type[Quantizer], nn.Module, None]
"""What a ``*_quant`` argument accepts: a quantizer class, a (shared) quantizer module, or None."""

Layout = Mapping[str, int]
"""``{"channel_axis": .., "group_dim": ..}``: where a tensor's channels and reduction axis lie."""

ROLES = ("weight", "bias", "input", "output", "act")


def split_overrides(
    layer: str, overrides: Mapping[str, Any], roles: Sequence[str], other_kwargs: Iterable[str] = ()
) -> Dict[str, Dict[str, Any]]:
    """``{role: {attribute: value}}`` from ``{"<role>_<attribute>": value}``.

    ``roles`` are the quantizers this layer has; ``other_kwargs`` are its ordinary keyword
    arguments, used only to suggest a fix for a misspelt one (``return_quant_tensors``).
    """
    split: Dict[str, Dict[str, Any]] = {role: {} for role in roles}
    for key, value in overrides.items():
        role = next((r for r in roles if key.startswith(r + "_") and len(key) > len(r) + 1), None)
        if role is None:
            raise TypeError(_unknown_kwarg_message(layer, key, roles, other_kwargs))
        split[role][key[len(role) + 1:]] = value
    return split


def _unknown_kwarg_message(layer: str, key: str, roles: Sequence[str], other_kwargs: Iterable[str]) -> str:
    known = [f"{r}_quant" for r in roles] + list(other_kwargs)
    close = difflib.get_close_matches(key, known, n=2, cutoff=0.75)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    foreign = next((r for r in ROLES if key.startswith(r + "_") and r not in roles), None)
    why = f" ({layer} has no {foreign}_quant)" if foreign else ""
    prefixes = ", ".join(f"{r}_" for r in roles)
    return (
        f"{layer} got an unexpected keyword argument {key!r}{why}{hint}. Quantizer overrides are "
        f"named <quantizer>_<attribute> with a prefix among {prefixes} (e.g. {roles[0]}_bit_width=4)"
    )


def make_quantizer(
    layer: str, role: str, spec: QuantizerSpec, overrides: Dict[str, Any], layout: Optional[Layout]
) -> Optional[nn.Module]:
    """The runtime module for ``spec`` (see the module docstring), or ``None`` when disabled.

    ``layout`` is the layer's ``{"channel_axis", "group_dim"}`` for this tensor; it fills the
    quantizer's ``channel_axis`` / ``group_dim`` where the quantizer leaves them ``None``.
    """
    argument = f"{role}_quant"
    if spec is None:
        if overrides:
            raise TypeError(
                f"{layer}: {_kwargs(role, overrides)} override {argument}, but {argument} is None "
                f"(disabled); pass {argument}=<a quantizer class> to quantize this tensor"
            )
        return None
    if isinstance(spec, nn.Module):
        if overrides:
            raise TypeError(
                f"{layer}: {_kwargs(role, overrides)} cannot apply to {argument}, a shared "
                f"{type(spec).__name__} instance (overriding it would change every layer sharing it); "
                f"build the shared instance with the attributes instead, e.g. "
                f"build_tensor_quantizer(Q, {next(iter(overrides))}=...), or pass a quantizer class"
            )
        return spec
    if not (isinstance(spec, type) and issubclass(spec, Quantizer)):
        raise TypeError(
            f"{layer}: {argument} must be a quantizer class (e.g. Int8WeightPerTensorFloat), a "
            f"TensorQuantizer instance to share, or None; got {spec!r}"
        )
    try:
        check_attribute_names(spec, overrides, prefix=role + "_")
    except TypeError as error:
        raise TypeError(f"{layer}: {error}") from None
    try:
        attributes = resolve_attributes(spec, **overrides)
    except QuantizerConfigError as error:
        raise error.located(f"{layer}.{argument}") from None
    if attributes.role is Role.BIAS and role != "bias":
        raise TypeError(
            f"{layer}: {argument}={spec.__name__} is a bias quantizer (its scale is input scale x "
            f"weight scale); pass it as bias_quant"
        )
    if layout:
        attributes = attributes.with_layout(layout.get("channel_axis"), layout.get("group_dim"))
    try:
        return build_quantizer(attributes)
    except QuantizerConfigError as error:
        raise error.naming(spec.__name__).located(f"{layer}.{argument}") from None


def _kwargs(role: str, overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{role}_{name}={value!r}" for name, value in overrides.items())
