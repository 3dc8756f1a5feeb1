"""Building the runtime module of a quantizer from its validated attributes.

The builder is a ``dependencies`` Injector with one input, ``attributes`` (a
:class:`~quantizers.zoo.attributes.QuantizerAttributes`), and four nodes computed from it: the
element ``fmt``, the ``granularity``, the ``scaler`` (scale rule bound to the format) and the
``observer``. ``tensor_quantizer`` assembles them into a
:class:`~quantizers.tensor_quantizer.TensorQuantizer`; ``bias_quantizer`` builds the
:class:`~quantizers.bias_quantizer.BiasQuantizer` of ``role="bias"``. No attribute name is matched
to a parameter name: every node reads the fields it needs from ``attributes``.

Extension points: ``scaling`` may be a :class:`~quantizers.scaling.scalers.Scaler` subclass (built
as ``cls(fmt)``) or instance, and ``observer`` an :class:`~quantizers.observers.Observer` subclass
(built as ``cls()``; EMA subclasses as ``cls(momentum)``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

import torch
from dependencies import Injector, value
from torch import nn

from ..bias_quantizer import BiasQuantizer
from ..formats import IntFormat, NumberFormat
from ..observers import EMAMinMaxObserver, Observer
from ..scaling.granularity import Granularity
from ..scaling.scalers import FloatScaler, IntScaler, MXScaler, NVFP4Scaler, Scaler, UnitScaler
from ..tensor_quantizer import TensorQuantizer
from .attributes import QuantizerAttributes, observer_class
from .base import Quantizer, resolve_attributes
from .errors import QuantizerConfigError
from .modes import SCALE_ROUNDING_DEFAULTS, GranularityKind, Role, Scaling

ROLE_LAYOUTS: Dict[Role, Dict[str, int]] = {
    Role.WEIGHT: {"channel_axis": 0, "group_dim": 1},
    Role.ACT: {"channel_axis": 1, "group_dim": -1},
    Role.BIAS: {"channel_axis": 0, "group_dim": 0},
}
"""Where a role's channels and reduction axis lie when neither the quantizer nor a layer says."""


@value
def _fmt(attributes: QuantizerAttributes) -> NumberFormat:
    return attributes.number_format


@value
def _granularity(attributes: QuantizerAttributes) -> Granularity:
    a = attributes.with_layout(**ROLE_LAYOUTS[attributes.role])
    kind = a.granularity
    axis = a.channel_axis if kind is GranularityKind.CHANNEL else a.group_dim if kind in (GranularityKind.GROUP, GranularityKind.TOKEN) else 0
    return Granularity(
        kind.value, axis, a.group_size if kind is GranularityKind.GROUP else None,
        a.tile_shape if kind is GranularityKind.TILE else None,
    )


@value
def _scaler(attributes: QuantizerAttributes, fmt: NumberFormat) -> Scaler:
    scaling = attributes.scaling
    if isinstance(scaling, Scaler):
        return scaling
    if isinstance(scaling, type):
        return scaling(fmt)
    if scaling is Scaling.NONE:
        return UnitScaler()
    if scaling is Scaling.NVFP4:
        return NVFP4Scaler(fmt)
    rounding = (attributes.scale_rounding or SCALE_ROUNDING_DEFAULTS.get(scaling))
    if scaling is Scaling.E8M0:
        return MXScaler(fmt, rounding.value)
    power_of_two = rounding.value if scaling is Scaling.PO2 else None
    if isinstance(fmt, IntFormat):
        return IntScaler(
            fmt, attributes.symmetric, attributes.zero_point_formulation.value, power_of_two,
            attributes.full_range_divisor.value,
        )
    return FloatScaler(fmt, power_of_two)


@value
def _observer(attributes: QuantizerAttributes) -> Optional[Observer]:
    cls = observer_class(attributes.observer)
    if cls is None:
        return None
    return cls(attributes.momentum) if issubclass(cls, EMAMinMaxObserver) else cls()


@value
def _tensor_quantizer(attributes, fmt, granularity, scaler, observer) -> TensorQuantizer:
    a = attributes
    return TensorQuantizer(
        fmt, granularity, scaler, range_method=a.range_method.value, percentile=a.percentile,
        mse_ratios=None if a.mse_ratios is None else torch.tensor(a.mse_ratios, dtype=torch.float64),
        observer=observer, rounding=a.rounding, saturating=a.saturating, float_range=a.float_range,
        learned_scale=a.learned_scale,
    )


@value
def _bias_quantizer(attributes, fmt) -> BiasQuantizer:
    return BiasQuantizer(fmt, attributes.rounding)


class QuantizerBuilder(Injector):
    """The builder's nodes; ``QuantizerBuilder.let(attributes=a).tensor_quantizer``."""

    fmt = _fmt
    granularity = _granularity
    scaler = _scaler
    observer = _observer
    tensor_quantizer = _tensor_quantizer
    bias_quantizer = _bias_quantizer


def build_quantizer(attributes: QuantizerAttributes) -> nn.Module:
    """The runtime module of validated ``attributes``: a :class:`TensorQuantizer`, or a
    :class:`BiasQuantizer` for ``role="bias"``. Errors of custom scalers and observers come out as
    :class:`QuantizerConfigError` naming the attribute. The module keeps ``attributes`` as
    ``quant_attributes`` (packed checkpoints record them to rebuild it)."""
    container = QuantizerBuilder.let(attributes=attributes)
    try:
        module = container.bias_quantizer if attributes.role is Role.BIAS else container.tensor_quantizer
    except QuantizerConfigError:
        raise
    except Exception as error:  # a custom Scaler/Observer or a runtime constructor refusing its arguments
        raise QuantizerConfigError(f"could not be built: {type(error).__name__}: {error}") from error
    module.quant_attributes = attributes  # what it was built from (saved by qlayers.export)
    return module


def build_tensor_quantizer(
    quantizer: Type[Quantizer], layout_defaults: Optional[Dict[str, int]] = None, **overrides: Any
) -> nn.Module:
    """The runtime module of ``quantizer`` with ``overrides`` applied.

    ``layout_defaults`` (``{"channel_axis": .., "group_dim": ..}``) fill ``channel_axis`` and
    ``group_dim`` where the quantizer leaves them ``None``; layers pass their own. Bias quantizers
    (``role="bias"``) give a :class:`~quantizers.bias_quantizer.BiasQuantizer`.
    """
    attributes = resolve_attributes(quantizer, **overrides)
    layout = layout_defaults or ROLE_LAYOUTS[attributes.role]
    try:
        return build_quantizer(attributes.with_layout(layout.get("channel_axis"), layout.get("group_dim")))
    except QuantizerConfigError as error:
        raise error.naming(quantizer.__name__) from error.__cause__
