"""Learned weight ranges start from the weight when a model is converted.

A quantizer class (or config section) with ``learned_scale=True`` gives a runtime quantizer whose
range source is :attr:`~quantizers.RangeSource.LEARNED` (the builder passes the attribute to
:class:`~quantizers.TensorQuantizer`): an ``nn.Parameter`` ``learned_range`` holds the range
statistic (absmax per scale, or stacked ``(min, max)``); scales follow it, so gradients reach it
through ``scale = amax / max`` and the straight-through fake quantization (LSQ's scale gradient,
PACT's clipping range). :func:`init_learned_weight_range` starts a weight's learned range from the
weight's own statistic, so the parameter has its final shape before an optimizer or
``DistributedDataParallel`` sees it (a hand-built layer does it at its first forward);
activations' learned ranges start from calibration (:func:`~qlayers.model.calibrate.finish_calibration`).
"""
from __future__ import annotations

from torch import nn

from quantizers import TensorQuantizer


def init_learned_weight_range(layer: nn.Module) -> None:
    """Initialise the learned range of ``layer``'s weight quantizer (if it learns one) from the weight."""
    quantizer = getattr(layer, "weight_quant", None)
    if isinstance(quantizer, TensorQuantizer):
        quantizer.init_learned_range(layer.weight.detach())
