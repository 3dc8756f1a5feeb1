"""Model-level quantizer options applied after a layer is built: learned ranges.

A quantizer class (or config section) with ``learned_scale=True`` gives a runtime quantizer whose
range source is :attr:`~quantizers.RangeSource.LEARNED` (an ``nn.Parameter`` ``learned_range``
holding the range statistic: absmax per scale, or stacked ``(min, max)``; scales follow it, so
gradients reach it through ``scale = amax / max`` and the straight-through fake quantization: LSQ's
scale gradient, PACT's clipping range). :func:`configure_quantizers` makes sure of that and starts
a weight's learned range from the weight's own statistic, so the parameter has its final shape
before an optimizer or ``DistributedDataParallel`` sees it; activations' learned ranges start from
calibration (:func:`~qlayers.model.calibrate.finish_calibration`).
"""
from __future__ import annotations

from typing import Mapping, Optional

from torch import nn

from quantizers import RangeSource, TensorQuantizer


def configure_quantizers(layer: nn.Module, roles: Mapping[str, Optional[type]]) -> None:
    """Apply the ``learned_scale`` option of the class each quantizer of ``layer`` (a QuantLayer)
    was built from (``roles``: role -> quantizer class) and initialise learned weight ranges."""
    for role in layer.quant_roles:
        quantizer = getattr(layer, f"{role}_quant", None)
        if not isinstance(quantizer, TensorQuantizer):
            continue
        if getattr(roles.get(role), "learned_scale", False):
            quantizer.range_source = RangeSource.LEARNED
        if role == "weight":
            quantizer.init_learned_range(layer.weight.detach())
